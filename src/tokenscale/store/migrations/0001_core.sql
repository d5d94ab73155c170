-- Tables every back end shares: carrier precedence per client stream, cumulative series state.

-- One row per client stream (a session, a conversation or a service instance): the best (lowest)
-- carrier rank seen so far. Only usage_events rows of that rank are counted.
CREATE TABLE tokenscale.usage_streams (
    tenant      text        NOT NULL,
    tool        text        NOT NULL,
    stream      text        NOT NULL,
    best_rank   smallint    NOT NULL,
    first_seen  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, tool, stream)
);

-- The last point taken from each CUMULATIVE metric series, so increments stay exact across
-- receiver restarts and several receivers sharing this database.
CREATE TABLE tokenscale.metric_series (
    series_key  bytea            PRIMARY KEY,
    start_ns    bigint           NOT NULL,
    time_ns     bigint           NOT NULL,
    value       double precision NOT NULL,
    count       bigint           NOT NULL,
    updated_at  timestamptz      NOT NULL DEFAULT now()
);

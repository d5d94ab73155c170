-- usage_events on plain PostgreSQL: declarative partitioning by UTC day.
-- One row per AI request (per-request carriers) or per usage increment (metric carriers).
-- Token columns are DISJOINT: input excludes cache reads and writes; output includes reasoning.
CREATE TABLE tokenscale.usage_events (
    time               timestamptz      NOT NULL,
    tenant             text             NOT NULL,
    source             text             NOT NULL,
    rank               smallint         NOT NULL,
    counted            boolean          NOT NULL,
    tool               text             NOT NULL,
    stream             text             NOT NULL,
    service_name       text             NOT NULL,
    user_email         text,
    user_id            text,
    session_id         text,
    conversation_id    text,
    provider           text,
    model              text,
    operation          text,
    request_id         text,
    requests           integer          NOT NULL DEFAULT 0,
    input_tokens       bigint           NOT NULL DEFAULT 0,
    cache_read_tokens  bigint           NOT NULL DEFAULT 0,
    cache_write_tokens bigint           NOT NULL DEFAULT 0,
    output_tokens      bigint           NOT NULL DEFAULT 0,
    reasoning_tokens   bigint           NOT NULL DEFAULT 0,
    cost_usd           numeric(20, 10),
    cost_source        text,
    duration_ms        double precision,
    error_type         text,
    attributes         jsonb            NOT NULL DEFAULT '{}',
    dedupe_key         bytea            NOT NULL
) PARTITION BY RANGE (time);

-- Retried exports: the same record always has the same dedupe key (and time).
CREATE UNIQUE INDEX usage_events_dedupe ON tokenscale.usage_events (dedupe_key, time);
-- Retracting the rows of a stream when a better carrier appears (only ranks above 1 can be).
CREATE INDEX usage_events_stream ON tokenscale.usage_events (tenant, tool, stream) WHERE counted AND rank > 1;
CREATE INDEX usage_events_tenant_time ON tokenscale.usage_events (tenant, time DESC);

-- Creates the daily partitions holding the given UTC days; safe under concurrency.
CREATE FUNCTION tokenscale.ensure_partitions(days date[]) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    d date;
    name text;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('tokenscale.ensure_partitions'));
    FOREACH d IN ARRAY days LOOP
        name := 'usage_events_p' || to_char(d, 'YYYYMMDD');
        IF to_regclass('tokenscale.' || name) IS NULL THEN
            EXECUTE format(
                'CREATE TABLE tokenscale.%I PARTITION OF tokenscale.usage_events FOR VALUES FROM (%L) TO (%L)',
                name, d::timestamp AT TIME ZONE 'UTC', (d + 1)::timestamp AT TIME ZONE 'UTC');
        END IF;
    END LOOP;
END
$$;

-- The counting model: per-request records by the request's own identity, and the reconciliation of
-- aggregate carriers (metrics, and per-request carriers without a shared identity) by totals per
-- stream (the client's resource). See docs/mapping.md.

-- Every identity a request was seen with (a provider response/request id, or a trace context),
-- hashed, and the request it belongs to.
CREATE TABLE tokenscale.request_ids (
    tenant       text  NOT NULL,
    id           bytea NOT NULL,
    request_key  bytea NOT NULL,
    PRIMARY KEY (tenant, id)
);

-- One row per request: the usage_events row that is its counted record (its best carrier).
CREATE TABLE tokenscale.requests (
    tenant       text        NOT NULL,
    request_key  bytea       NOT NULL,
    rank         smallint    NOT NULL,
    row_time     timestamptz,
    row_key      bytea,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, request_key)
);

-- One row per stream: locked while the stream's ledger is reconciled.
CREATE TABLE tokenscale.ledger_streams (
    tenant     text    NOT NULL,
    tool       text    NOT NULL,
    stream     text    NOT NULL,
    has_views  boolean NOT NULL DEFAULT false,
    PRIMARY KEY (tenant, tool, stream)
);

-- Counted records per stream and subkey ('' where the record does not say).
CREATE TABLE tokenscale.ledger_records (
    tenant             text    NOT NULL,
    tool               text    NOT NULL,
    stream             text    NOT NULL,
    model              text    NOT NULL,
    who                text    NOT NULL,
    session            text    NOT NULL,
    requests           bigint  NOT NULL DEFAULT 0,
    input_tokens       bigint  NOT NULL DEFAULT 0,
    cache_read_tokens  bigint  NOT NULL DEFAULT 0,
    cache_write_tokens bigint  NOT NULL DEFAULT 0,
    output_tokens      bigint  NOT NULL DEFAULT 0,
    reasoning_tokens   bigint  NOT NULL DEFAULT 0,
    cost_usd           numeric NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant, tool, stream, model, who, session)
);

-- What each aggregate view (carrier) reported per stream and subkey.
CREATE TABLE tokenscale.ledger_views (
    tenant             text    NOT NULL,
    tool               text    NOT NULL,
    stream             text    NOT NULL,
    model              text    NOT NULL,
    who                text    NOT NULL,
    session            text    NOT NULL,
    view               text    NOT NULL,
    requests           bigint  NOT NULL DEFAULT 0,
    input_tokens       bigint  NOT NULL DEFAULT 0,
    cache_read_tokens  bigint  NOT NULL DEFAULT 0,
    cache_write_tokens bigint  NOT NULL DEFAULT 0,
    output_tokens      bigint  NOT NULL DEFAULT 0,
    reasoning_tokens   bigint  NOT NULL DEFAULT 0,
    cost_usd           numeric NOT NULL DEFAULT 0,
    reported           boolean NOT NULL DEFAULT false,
    template           jsonb   NOT NULL DEFAULT '{}',
    PRIMARY KEY (tenant, tool, stream, model, who, session, view)
);

-- The residual counted per stream, subkey and UTC hour (mirrored by counted usage_events rows of
-- source 'tokenscale.reconciled').
CREATE TABLE tokenscale.ledger_residuals (
    tenant             text        NOT NULL,
    tool               text        NOT NULL,
    stream             text        NOT NULL,
    model              text        NOT NULL,
    who                text        NOT NULL,
    session            text        NOT NULL,
    hour               timestamptz NOT NULL,
    requests           bigint      NOT NULL DEFAULT 0,
    input_tokens       bigint      NOT NULL DEFAULT 0,
    cache_read_tokens  bigint      NOT NULL DEFAULT 0,
    cache_write_tokens bigint      NOT NULL DEFAULT 0,
    output_tokens      bigint      NOT NULL DEFAULT 0,
    reasoning_tokens   bigint      NOT NULL DEFAULT 0,
    cost_usd           numeric     NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant, tool, stream, model, who, session, hour)
);

-- Rows are no longer retracted per stream: an amendment un-counts one row by its (dedupe_key, time).
DROP INDEX IF EXISTS tokenscale.usage_events_stream;

-- When a record last took the values of a better carrier of its request (NULL: never amended).
ALTER TABLE tokenscale.usage_events ADD COLUMN amended_at timestamptz;

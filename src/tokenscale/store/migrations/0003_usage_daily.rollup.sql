-- usage_daily where continuous aggregates are not available (plain PostgreSQL, TimescaleDB Apache):
-- a table the writer keeps exact in the same transaction as the events it counts.
CREATE TABLE tokenscale.usage_daily (
    day                timestamptz      NOT NULL,
    tenant             text             NOT NULL,
    tool               text             NOT NULL,
    user_email         text,
    provider           text,
    model              text,
    requests           bigint           NOT NULL,
    input_tokens       bigint           NOT NULL,
    cache_read_tokens  bigint           NOT NULL,
    cache_write_tokens bigint           NOT NULL,
    output_tokens      bigint           NOT NULL,
    reasoning_tokens   bigint           NOT NULL,
    cost_usd           numeric(24, 10),
    unpriced_events    bigint           NOT NULL,
    events             bigint           NOT NULL
);

CREATE UNIQUE INDEX usage_daily_key ON tokenscale.usage_daily
    (tenant, day, tool, user_email, provider, model) NULLS NOT DISTINCT;

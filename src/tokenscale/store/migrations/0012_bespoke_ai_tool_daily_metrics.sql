-- Daily metrics of bespoke AI tools pushed through aiToolMetrics.push / pushAll (DX Data Cloud's
-- columns, plus tenant, id and timestamps). One row per tenant, email, date and tool: pushing the
-- same combination again replaces that row.
CREATE TABLE tokenscale.bespoke_ai_tool_daily_metrics (
    id                  uuid        PRIMARY KEY,
    tenant              text        NOT NULL,
    email               text        NOT NULL,
    date                date        NOT NULL,
    is_active           boolean     NOT NULL,
    tool                text        NOT NULL,
    metrics             jsonb,
    input_tokens        bigint      CHECK (input_tokens >= 0),
    output_tokens       bigint      CHECK (output_tokens >= 0),
    cache_write_tokens  bigint      CHECK (cache_write_tokens >= 0),
    cache_read_tokens   bigint      CHECK (cache_read_tokens >= 0),
    spend_cents         bigint      CHECK (spend_cents >= 0),
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
);

CREATE UNIQUE INDEX bespoke_ai_tool_daily_metrics_key
    ON tokenscale.bespoke_ai_tool_daily_metrics (tenant, email, date, tool);
CREATE INDEX bespoke_ai_tool_daily_metrics_date
    ON tokenscale.bespoke_ai_tool_daily_metrics (tenant, date);

-- The hook for tokenscale.ai_tool_daily_metrics (daily metrics per user and tool derived from OTLP):
-- pushed rows in its shape, marked source = 'push', to be UNION ALLed into it.
CREATE VIEW tokenscale.ai_tool_daily_metrics_pushed AS
SELECT
    tenant,
    date                                   AS day,
    email                                  AS user_email,
    tool,
    'push'::text                           AS source,
    is_active,
    coalesce(input_tokens, 0)              AS input_tokens,
    coalesce(cache_read_tokens, 0)         AS cache_read_tokens,
    coalesce(cache_write_tokens, 0)        AS cache_write_tokens,
    coalesce(output_tokens, 0)             AS output_tokens,
    (spend_cents / 100.0)::numeric(24, 10) AS cost_usd,
    metrics,
    updated_at
FROM tokenscale.bespoke_ai_tool_daily_metrics;

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

-- Pushed rows with exactly the columns of tokenscale.ai_tool_daily_metrics_otlp (0004), in its
-- order, marked source = 'push'; tokenscale.ai_tool_daily_metrics (0014) is the union of both.
-- Optional values a push left out stay NULL.
CREATE VIEW tokenscale.ai_tool_daily_metrics_pushed AS
SELECT
    tenant,
    email,
    date,
    is_active,
    tool,
    coalesce(metrics, '{}'::jsonb) AS metrics,
    input_tokens,
    output_tokens,
    cache_write_tokens,
    cache_read_tokens,
    spend_cents,
    'push'::text                   AS source
FROM tokenscale.bespoke_ai_tool_daily_metrics;

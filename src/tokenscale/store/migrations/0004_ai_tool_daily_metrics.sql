-- AI tool activity from OTLP (sessions, lines added/removed, commits, pull requests, active time,
-- tool calls, edit decisions, ...), and the per-user, per-day, per-tool view in DX's record shape.

CREATE TABLE tokenscale.activity_events (
    time          timestamptz      NOT NULL,
    tenant        text             NOT NULL,
    tool          text             NOT NULL,
    stream        text             NOT NULL,
    service_name  text             NOT NULL,
    user_email    text,
    user_id       text,
    session_id    text,
    metric        text             NOT NULL,
    value         double precision NOT NULL,
    dedupe_key    bytea            NOT NULL
);
CREATE UNIQUE INDEX activity_events_dedupe ON tokenscale.activity_events (dedupe_key, time);
CREATE INDEX activity_events_tenant_time ON tokenscale.activity_events (tenant, time DESC);

-- One row per (tenant, user e-mail, UTC date, tool) with usage from usage_daily and activity
-- measures in `metrics` (plus `requests`). `email` is NULL where the client sends no e-mail
-- (e.g. Claude Code with an API key rather than a login). tokenscale.ai_tool_daily_metrics (0014)
-- shows these rows and the pushed ones.
CREATE VIEW tokenscale.ai_tool_daily_metrics_otlp AS
WITH usage AS (
    SELECT tenant,
           coalesce(user_email, '')                 AS email,
           (day AT TIME ZONE 'UTC')::date           AS date,
           tool,
           sum(requests)::bigint                    AS requests,
           sum(input_tokens)::bigint                AS input_tokens,
           sum(output_tokens)::bigint               AS output_tokens,
           sum(cache_write_tokens)::bigint          AS cache_write_tokens,
           sum(cache_read_tokens)::bigint           AS cache_read_tokens,
           sum(cost_usd)                            AS cost_usd
    FROM tokenscale.usage_daily
    GROUP BY 1, 2, 3, 4
), activity AS (
    SELECT tenant, email, date, tool, jsonb_object_agg(metric, value) AS metrics
    FROM (
        SELECT tenant,
               coalesce(user_email, '')             AS email,
               (time AT TIME ZONE 'UTC')::date      AS date,
               tool,
               metric,
               sum(value)                           AS value
        FROM tokenscale.activity_events
        GROUP BY 1, 2, 3, 4, 5
    ) per_metric
    GROUP BY 1, 2, 3, 4
)
SELECT tenant,
       nullif(email, '')                                               AS email,
       date,
       coalesce(u.requests, 0) > 0 OR a.metrics IS NOT NULL            AS is_active,
       tool,
       coalesce(a.metrics, '{}'::jsonb)
           || jsonb_build_object('requests', coalesce(u.requests, 0))   AS metrics,
       coalesce(u.input_tokens, 0)                                     AS input_tokens,
       coalesce(u.output_tokens, 0)                                    AS output_tokens,
       coalesce(u.cache_write_tokens, 0)                               AS cache_write_tokens,
       coalesce(u.cache_read_tokens, 0)                                AS cache_read_tokens,
       round(u.cost_usd * 100)::bigint                                 AS spend_cents,
       'otlp'::text                                                    AS source
FROM usage u
FULL JOIN activity a USING (tenant, email, date, tool);

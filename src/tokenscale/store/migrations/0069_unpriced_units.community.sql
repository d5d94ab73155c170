-- TimescaleDB community: the continuous aggregates count a request that bills units (images, audio
-- seconds, characters, video: the gen_ai.usage.* unit keys the mapping stores) and has no price as
-- unpriced, tokens or not, as the writer's rollups on the other back ends do. The aggregates (and the
-- views over usage_daily) are created again, with the refresh policies 0020 set (`tokenscale serve`
-- sets them from its settings); `migrate` then materializes them.
DROP VIEW tokenscale.ai_tool_daily_metrics;
DROP VIEW tokenscale.ai_tool_daily_metrics_otlp;
DROP MATERIALIZED VIEW tokenscale.usage_hourly;
DROP MATERIALIZED VIEW tokenscale.usage_daily;

CREATE MATERIALIZED VIEW tokenscale.usage_daily
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT
    time_bucket(INTERVAL '1 day', time)                        AS day,
    tenant,
    tool,
    user_email,
    provider,
    model,
    sum(requests)::bigint                                       AS requests,
    sum(input_tokens)::bigint                                   AS input_tokens,
    sum(cache_read_tokens)::bigint                              AS cache_read_tokens,
    sum(cache_write_tokens)::bigint                             AS cache_write_tokens,
    sum(output_tokens)::bigint                                  AS output_tokens,
    sum(reasoning_tokens)::bigint                               AS reasoning_tokens,
    sum(cost_usd)::numeric(24, 10)                              AS cost_usd,
    sum(CASE WHEN cost_usd IS NULL AND cost_source IS NULL
                  AND (input_tokens + cache_read_tokens + cache_write_tokens + output_tokens > 0
                       OR attributes ?| ARRAY['gen_ai.usage.audio.seconds', 'gen_ai.usage.image.count', 'gen_ai.usage.text.characters', 'gen_ai.usage.video.count', 'gen_ai.usage.video.seconds'])
             THEN greatest(requests, 1) ELSE 0 END)::bigint     AS unpriced_events,
    count(*)                                                    AS events
FROM tokenscale.usage_events
WHERE counted
GROUP BY 1, 2, 3, 4, 5, 6
WITH NO DATA;

SELECT add_continuous_aggregate_policy('tokenscale.usage_daily',
    start_offset      => INTERVAL '32 days',
    end_offset        => INTERVAL '1 hour',
    schedule_interval => INTERVAL '15 minutes',
    initial_start     => now() + INTERVAL '15 minutes');

CREATE MATERIALIZED VIEW tokenscale.usage_hourly
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT
    time_bucket(INTERVAL '1 hour', time)                       AS hour,
    tenant,
    sum(requests)::bigint                                       AS requests,
    sum(input_tokens)::bigint                                   AS input_tokens,
    sum(cache_read_tokens)::bigint                              AS cache_read_tokens,
    sum(cache_write_tokens)::bigint                             AS cache_write_tokens,
    sum(output_tokens)::bigint                                  AS output_tokens,
    sum(reasoning_tokens)::bigint                               AS reasoning_tokens,
    sum(cost_usd)::numeric(24, 10)                              AS cost_usd,
    sum(CASE WHEN cost_usd IS NULL AND cost_source IS NULL
                  AND (input_tokens + cache_read_tokens + cache_write_tokens + output_tokens > 0
                       OR attributes ?| ARRAY['gen_ai.usage.audio.seconds', 'gen_ai.usage.image.count', 'gen_ai.usage.text.characters', 'gen_ai.usage.video.count', 'gen_ai.usage.video.seconds'])
             THEN greatest(requests, 1) ELSE 0 END)::bigint     AS unpriced_events,
    count(*)                                                    AS events
FROM tokenscale.usage_events
WHERE counted
GROUP BY 1, 2
WITH NO DATA;

SELECT add_continuous_aggregate_policy('tokenscale.usage_hourly',
    start_offset      => INTERVAL '32 days',
    end_offset        => INTERVAL '1 hour',
    schedule_interval => INTERVAL '15 minutes',
    initial_start     => now() + INTERVAL '15 minutes');

-- The views over usage_daily, as 0004 and 0014 define them.
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

CREATE VIEW tokenscale.ai_tool_daily_metrics AS
SELECT * FROM tokenscale.ai_tool_daily_metrics_otlp
UNION ALL
SELECT * FROM tokenscale.ai_tool_daily_metrics_pushed;

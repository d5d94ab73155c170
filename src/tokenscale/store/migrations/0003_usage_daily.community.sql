-- usage_daily on TimescaleDB community edition: a continuous aggregate with real-time aggregation
-- (not-yet-materialized rows are included) and a refresh policy that picks up late data for 3 days.
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
                  AND input_tokens + cache_read_tokens + cache_write_tokens + output_tokens > 0
             THEN 1 ELSE 0 END)::bigint                         AS unpriced_events,
    count(*)                                                    AS events
FROM tokenscale.usage_events
WHERE counted
GROUP BY 1, 2, 3, 4, 5, 6
WITH NO DATA;

SELECT add_continuous_aggregate_policy('tokenscale.usage_daily',
    start_offset      => INTERVAL '3 days',
    end_offset        => INTERVAL '1 hour',
    schedule_interval => INTERVAL '15 minutes');

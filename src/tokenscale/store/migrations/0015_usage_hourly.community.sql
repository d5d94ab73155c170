-- usage_hourly on TimescaleDB community edition: each tenant's counted usage per UTC hour, as a
-- continuous aggregate with real-time aggregation, refreshed like usage_daily. It answers
-- tenant-wide questions (rolling budget windows, daily series) from 24 rows a day.
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
                  AND input_tokens + cache_read_tokens + cache_write_tokens + output_tokens > 0
             THEN 1 ELSE 0 END)::bigint                         AS unpriced_events,
    count(*)                                                    AS events
FROM tokenscale.usage_events
WHERE counted
GROUP BY 1, 2
WITH NO DATA;

SELECT add_continuous_aggregate_policy('tokenscale.usage_hourly',
    start_offset      => INTERVAL '3 days',
    end_offset        => INTERVAL '1 hour',
    schedule_interval => INTERVAL '15 minutes');

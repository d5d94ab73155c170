-- usage_hourly where continuous aggregates are not available (plain PostgreSQL, TimescaleDB Apache):
-- each tenant's counted usage per UTC hour, kept exact by the writer in the same transaction as the
-- events it counts. It answers tenant-wide questions (rolling budget windows, daily series) from
-- 24 rows a day instead of one row per user, tool and model.
CREATE TABLE tokenscale.usage_hourly (
    hour               timestamptz      NOT NULL,
    tenant             text             NOT NULL,
    requests           bigint           NOT NULL,
    input_tokens       bigint           NOT NULL,
    cache_read_tokens  bigint           NOT NULL,
    cache_write_tokens bigint           NOT NULL,
    output_tokens      bigint           NOT NULL,
    reasoning_tokens   bigint           NOT NULL,
    cost_usd           numeric(24, 10),
    unpriced_events    bigint           NOT NULL,
    events             bigint           NOT NULL,
    PRIMARY KEY (tenant, hour)
);

-- Usage recorded before this version.
INSERT INTO tokenscale.usage_hourly
SELECT date_trunc('hour', time), tenant,
       sum(requests), sum(input_tokens), sum(cache_read_tokens), sum(cache_write_tokens),
       sum(output_tokens), sum(reasoning_tokens), sum(cost_usd),
       count(*) FILTER (WHERE cost_usd IS NULL AND cost_source IS NULL
                        AND input_tokens + cache_read_tokens + cache_write_tokens + output_tokens > 0),
       count(*)
FROM tokenscale.usage_events WHERE counted
GROUP BY 1, 2;

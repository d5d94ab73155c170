-- Two more grains of the budget check's rollups where continuous aggregates are not available
-- (plain PostgreSQL, TimescaleDB Apache), kept exact by the writer in the same transaction as the
-- events they count, like usage_hourly and usage_scope_hourly:
--   usage_scope_daily: per UTC day,
--   usage_scope_5min:  per 5-minute bucket (start a multiple of 5 minutes since the epoch),
-- each per tenant (scope 'tenant', value ''), per tool and per model: scopes of a few values, so an
-- export adds a few rows. Not per user: an export of an app's spans for many users would add two
-- rows per span (measured: 1.3-1.5x the writer's CPU per row); user windows are read from
-- usage_scope_hourly's whole hours and the events of their partial edge hours.
-- A tenant, tool or model window [now - W, now] is read as whole days from usage_scope_daily, the
-- whole hours around them from usage_hourly / usage_scope_hourly, the whole 5-minute buckets at both
-- ends from usage_scope_5min, and only the events of the two partial 5-minute buckets at its edges
-- from usage_events: a 30-day window reads ~30 + 46 + 22 rows instead of 720 hours and up to two
-- hours of the tenant's events (docs/performance.md, "Scoped budget check, second step").
CREATE TABLE tokenscale.usage_scope_daily (
    day                timestamptz      NOT NULL,
    tenant             text             NOT NULL,
    scope              text             NOT NULL CHECK (scope IN ('tenant', 'tool', 'model')),
    scope_value        text             NOT NULL,
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
CREATE UNIQUE INDEX usage_scope_daily_key ON tokenscale.usage_scope_daily (tenant, scope, scope_value, day)
    INCLUDE (input_tokens, cache_read_tokens, cache_write_tokens, output_tokens, cost_usd);

CREATE TABLE tokenscale.usage_scope_5min (
    start              timestamptz      NOT NULL,
    tenant             text             NOT NULL,
    scope              text             NOT NULL CHECK (scope IN ('tenant', 'tool', 'model')),
    scope_value        text             NOT NULL,
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
CREATE UNIQUE INDEX usage_scope_5min_key ON tokenscale.usage_scope_5min (tenant, scope, scope_value, start)
    INCLUDE (input_tokens, cache_read_tokens, cache_write_tokens, output_tokens, cost_usd);

-- Usage recorded before this version (unpriced: requests with tokens or billable units and no cost, as the writer counts them).
INSERT INTO tokenscale.usage_scope_daily
SELECT date_trunc('day', e.time, 'UTC'), e.tenant, k.scope, k.value,
       sum(e.requests), sum(e.input_tokens), sum(e.cache_read_tokens), sum(e.cache_write_tokens),
       sum(e.output_tokens), sum(e.reasoning_tokens), sum(e.cost_usd),
       sum(CASE WHEN e.cost_usd IS NULL AND e.cost_source IS NULL
                     AND (e.input_tokens + e.cache_read_tokens + e.cache_write_tokens + e.output_tokens > 0
                          OR e.attributes ?| ARRAY['gen_ai.usage.audio.seconds', 'gen_ai.usage.image.count', 'gen_ai.usage.text.characters', 'gen_ai.usage.video.count', 'gen_ai.usage.video.seconds'])
                THEN greatest(e.requests, 1) ELSE 0 END),
       count(*)
FROM tokenscale.usage_events e
CROSS JOIN LATERAL (VALUES ('tenant', ''), ('tool', e.tool), ('model', e.model)) AS k (scope, value)
WHERE e.counted AND k.value IS NOT NULL
GROUP BY 1, 2, 3, 4;

INSERT INTO tokenscale.usage_scope_5min
SELECT date_bin('5 minutes', e.time, TIMESTAMPTZ '1970-01-01 00:00:00+00'), e.tenant, k.scope, k.value,
       sum(e.requests), sum(e.input_tokens), sum(e.cache_read_tokens), sum(e.cache_write_tokens),
       sum(e.output_tokens), sum(e.reasoning_tokens), sum(e.cost_usd),
       sum(CASE WHEN e.cost_usd IS NULL AND e.cost_source IS NULL
                     AND (e.input_tokens + e.cache_read_tokens + e.cache_write_tokens + e.output_tokens > 0
                          OR e.attributes ?| ARRAY['gen_ai.usage.audio.seconds', 'gen_ai.usage.image.count', 'gen_ai.usage.text.characters', 'gen_ai.usage.video.count', 'gen_ai.usage.video.seconds'])
                THEN greatest(e.requests, 1) ELSE 0 END),
       count(*)
FROM tokenscale.usage_events e
CROSS JOIN LATERAL (VALUES ('tenant', ''), ('tool', e.tool), ('model', e.model)) AS k (scope, value)
WHERE e.counted AND k.value IS NOT NULL
GROUP BY 1, 2, 3, 4;

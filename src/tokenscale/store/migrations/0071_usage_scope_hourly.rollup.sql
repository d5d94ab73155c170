-- usage_scope_hourly where continuous aggregates are not available (plain PostgreSQL, TimescaleDB
-- Apache): each tenant's counted usage per UTC hour and per tool, per model and per user (the
-- user's email, else its user id), kept exact by the writer in the same transaction as the events
-- it counts. The budget check (tokenscale.api.scoped_budgets) reads a tool, model or user window's
-- whole hours from here: one row per hour of the window, however many events there are.
CREATE TABLE tokenscale.usage_scope_hourly (
    hour               timestamptz      NOT NULL,
    tenant             text             NOT NULL,
    scope              text             NOT NULL CHECK (scope IN ('tool', 'model', 'user')),
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
-- The writer's upserts and the check's range reads (one scope value, a range of hours): the
-- check's sums are included, so its reads are index-only scans of one scope value's hours.
CREATE UNIQUE INDEX usage_scope_hourly_key ON tokenscale.usage_scope_hourly (tenant, scope, scope_value, hour)
    INCLUDE (input_tokens, cache_read_tokens, cache_write_tokens, output_tokens, cost_usd);

-- Usage recorded before this version.
INSERT INTO tokenscale.usage_scope_hourly
SELECT date_trunc('hour', e.time), e.tenant, k.scope, k.value,
       sum(e.requests), sum(e.input_tokens), sum(e.cache_read_tokens), sum(e.cache_write_tokens),
       sum(e.output_tokens), sum(e.reasoning_tokens), sum(e.cost_usd),
       sum(CASE WHEN e.cost_usd IS NULL AND e.cost_source IS NULL
                     AND e.input_tokens + e.cache_read_tokens + e.cache_write_tokens + e.output_tokens > 0
                THEN greatest(e.requests, 1) ELSE 0 END),
       count(*)
FROM tokenscale.usage_events e
CROSS JOIN LATERAL (VALUES ('tool', e.tool), ('model', e.model), ('user', coalesce(e.user_email, e.user_id)))
    AS k (scope, value)
WHERE e.counted AND k.value IS NOT NULL
GROUP BY 1, 2, 3, 4;

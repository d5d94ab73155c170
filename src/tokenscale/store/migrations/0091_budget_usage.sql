-- The budget check's reads (tokenscale.api.scoped_budgets): the tokens and USD of each range of a
-- check's windows, in one call. Rollup ranges (part 'hour': usage_scope_hourly, 'tenant_hour':
-- usage_hourly; each an index range of one scope value's hours) give one row each, (part, position in the arrays, tokens, USD). Each
-- range of events (the partial edges of the windows) gives one row (part 'raw', its position) with
-- the tenant's, the tool's, the model's and the user's tokens and USD.
--
-- PL/pgSQL keeps each statement's plan for the session, and the plans are generic
-- (plan_cache_mode): a check is not planned again, and the events' partitions or chunks are pruned
-- when each range's statement starts (its bounds are parameters). Without JIT: a generic plan's
-- estimate for a range bounded by parameters is a share of the whole table, costly enough for
-- PostgreSQL to compile it (half a second) for the few rows it reads.
-- On TimescaleDB community only 'tenant_hour' and 'raw' ranges are asked for (no scoped rollups).
CREATE FUNCTION tokenscale.budget_usage(
    p_tenant text, p_tool text, p_model text, p_user text,
    r_part text[], r_scope text[], r_value text[], r_lo timestamptz[], r_hi timestamptz[],
    e_lo timestamptz[], e_hi timestamptz[]
) RETURNS TABLE (part text, i int, t0 numeric, c0 numeric, t1 numeric, c1 numeric,
                 t2 numeric, c2 numeric, t3 numeric, c3 numeric)
LANGUAGE plpgsql STABLE
SET jit = off
SET plan_cache_mode = force_generic_plan
AS $$
#variable_conflict use_column
DECLARE
    k int;
BEGIN
    IF 'hour' = ANY (r_part) THEN
        RETURN QUERY
        SELECT 'hour'::text, (r.n - 1)::int, s.t, s.c, NULL::numeric, NULL::numeric, NULL::numeric,
               NULL::numeric, NULL::numeric, NULL::numeric
        FROM unnest(r_part, r_scope, r_value, r_lo, r_hi) WITH ORDINALITY AS r (part, scope, value, lo, hi, n)
        CROSS JOIN LATERAL (
            SELECT coalesce(sum(x.input_tokens + x.cache_read_tokens + x.cache_write_tokens + x.output_tokens), 0) AS t,
                   coalesce(sum(x.cost_usd), 0) AS c
            FROM tokenscale.usage_scope_hourly x
            WHERE x.tenant = p_tenant AND x.scope = r.scope AND x.scope_value = r.value
              AND x.hour >= r.lo AND x.hour < r.hi
        ) AS s
        WHERE r.part = 'hour';
    END IF;
    IF 'tenant_hour' = ANY (r_part) THEN
        RETURN QUERY
        SELECT 'tenant_hour'::text, (r.n - 1)::int, s.t, s.c, NULL::numeric, NULL::numeric,
               NULL::numeric, NULL::numeric, NULL::numeric, NULL::numeric
        FROM unnest(r_part, r_lo, r_hi) WITH ORDINALITY AS r (part, lo, hi, n)
        CROSS JOIN LATERAL (
            SELECT coalesce(sum(x.input_tokens + x.cache_read_tokens + x.cache_write_tokens + x.output_tokens), 0) AS t,
                   coalesce(sum(x.cost_usd), 0) AS c
            FROM tokenscale.usage_hourly x
            WHERE x.tenant = p_tenant AND x.hour >= r.lo AND x.hour < r.hi
        ) AS s
        WHERE r.part = 'tenant_hour';
    END IF;
    FOR k IN 1 .. coalesce(cardinality(e_lo), 0) LOOP
        RETURN QUERY
        SELECT 'raw'::text, k - 1,
               coalesce(sum(e.input_tokens + e.cache_read_tokens + e.cache_write_tokens + e.output_tokens), 0),
               coalesce(sum(e.cost_usd), 0),
               coalesce(sum(e.input_tokens + e.cache_read_tokens + e.cache_write_tokens + e.output_tokens)
                        FILTER (WHERE e.tool = p_tool), 0),
               coalesce(sum(e.cost_usd) FILTER (WHERE e.tool = p_tool), 0),
               coalesce(sum(e.input_tokens + e.cache_read_tokens + e.cache_write_tokens + e.output_tokens)
                        FILTER (WHERE e.model = p_model), 0),
               coalesce(sum(e.cost_usd) FILTER (WHERE e.model = p_model), 0),
               coalesce(sum(e.input_tokens + e.cache_read_tokens + e.cache_write_tokens + e.output_tokens)
                        FILTER (WHERE coalesce(e.user_email, e.user_id) = p_user), 0),
               coalesce(sum(e.cost_usd) FILTER (WHERE coalesce(e.user_email, e.user_id) = p_user), 0)
        FROM tokenscale.usage_events e
        WHERE e.tenant = p_tenant AND e.counted AND e.time >= e_lo[k] AND e.time < e_hi[k];
    END LOOP;
END
$$;

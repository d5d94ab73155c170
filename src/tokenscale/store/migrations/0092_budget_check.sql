-- The budget check in one round trip (tokenscale.api.scoped_budgets.check_budgets): the windows of
-- the budgets that apply to an identity, each with its tokens and USD at p_now (the database's
-- clock when NULL), read as budget_usage (migration 0091) reads them.
--
-- tokenscale.window_pieces is tokenscale.api.scoped_budgets.window_pieces: the window [lo, hi]
-- (both ends included) as ranges [lo, hi) of events ('raw') and whole rollup buckets ('5min',
-- 'hour', 'day'; with p_grains false only 'raw' and 'hour'). The tests hold the two to the same
-- answers.
CREATE FUNCTION tokenscale.window_pieces(p_lo timestamptz, p_hi timestamptz, p_grains boolean)
RETURNS TABLE (grain text, lo timestamptz, hi timestamptz)
LANGUAGE plpgsql IMMUTABLE STRICT
AS $$
#variable_conflict use_column
DECLARE
    epoch CONSTANT timestamptz := TIMESTAMPTZ '1970-01-01 00:00:00+00';
    tick CONSTANT interval := INTERVAL '1 microsecond';
    a timestamptz;
    b timestamptz;
    h1 timestamptz;
    h2 timestamptz;
    d1 timestamptz;
    d2 timestamptz;
BEGIN
    IF NOT p_grains THEN
        a := date_bin('1 hour', p_lo, epoch);
        IF a < p_lo THEN a := a + INTERVAL '1 hour'; END IF;
        b := date_bin('1 hour', p_hi, epoch);
        IF a >= b THEN
            RETURN QUERY SELECT 'raw'::text, p_lo, p_hi + tick;
            RETURN;
        END IF;
        RETURN QUERY
        SELECT v.g, v.l, v.h FROM (VALUES ('raw'::text, p_lo, a), ('hour', a, b), ('raw', b, p_hi + tick))
            AS v (g, l, h)
        WHERE v.l < v.h;
        RETURN;
    END IF;
    a := date_bin('5 minutes', p_lo, epoch);
    IF a < p_lo THEN a := a + INTERVAL '5 minutes'; END IF;
    b := date_bin('5 minutes', p_hi, epoch);
    IF a >= b THEN
        RETURN QUERY SELECT 'raw'::text, p_lo, p_hi + tick;
        RETURN;
    END IF;
    h1 := date_bin('1 hour', a, epoch);
    IF h1 < a THEN h1 := h1 + INTERVAL '1 hour'; END IF;
    h1 := least(h1, b);
    h2 := greatest(date_bin('1 hour', b, epoch), h1);
    d1 := date_bin('1 day', h1, epoch);
    IF d1 < h1 THEN d1 := d1 + INTERVAL '1 day'; END IF;
    d1 := least(d1, h2);
    d2 := greatest(date_bin('1 day', h2, epoch), d1);
    RETURN QUERY
    SELECT v.g, v.l, v.h
    FROM (VALUES (1, 'raw'::text, p_lo, a), (2, '5min', a, h1), (3, 'hour', h1, d1), (4, 'day', d1, d2),
                 (5, 'hour', d2, h2), (6, '5min', h2, b), (7, 'raw', b, p_hi + tick)) AS v (n, g, l, h)
    WHERE v.l < v.h
    ORDER BY v.n;
END
$$;

-- The budget check in one call: rows of five kinds, which tokenscale.api.scoped_budgets puts
-- together (it cuts each window into the same pieces as window_pieces does here):
--   'now':    checked_at (p_now, else the database's clock) and grains (whether the writer keeps the
--             scoped rollups here: TimescaleDB community does not);
--   'window': one per window of every budget of p_tenant whose (scope, scope value) is among
--             (p_scopes[i], p_values[i]) (a tenant budget: scope 'tenant', value ''), and the
--             company budget (tokenscale.budgets, else p_company_limit tokens over p_company_days);
--   'rollup': tokens and USD of one range of rollup buckets (part 'day', 'hour', 'tenant_hour',
--             '5min') of one scope value, for the tenant, tool, model and user windows (tenant
--             windows only without grains);
--   'raw':    tokens and USD of one range of events, the tenant's (t0, c0), the tool's (t1, c1), the
--             model's (t2, c2) and the user's (t3, c3): the windows' partial edges;
--   'scan':   tokens and USD of one whole window of events of a scope value (team windows: events
--             whose attributes hold p_team_key = the team; without grains, tool, model and user).
CREATE FUNCTION tokenscale.budget_check(
    p_tenant text, p_scopes text[], p_values text[], p_now timestamptz, p_team_key text,
    p_company_limit numeric, p_company_days int
) RETURNS TABLE (kind text, checked_at timestamptz, grains boolean, budget_id text, scope text,
                 scope_value text, unit text, limit_value numeric, window_seconds int, part text,
                 lo timestamptz, hi timestamptz, t0 numeric, c0 numeric, t1 numeric, c1 numeric,
                 t2 numeric, c2 numeric, t3 numeric, c3 numeric)
LANGUAGE plpgsql STABLE
SET jit = off
SET plan_cache_mode = force_generic_plan
AS $$
#variable_conflict use_column
DECLARE
    v_now timestamptz := coalesce(p_now, now());
    v_grains boolean := to_regclass('tokenscale.usage_scope_5min') IS NOT NULL;
    v_tool text;
    v_model text;
    v_user text;
    b_id text[];
    b_unit text[];
    b_limit numeric[];
    w_scope text[];
    w_value text[];
    w_seconds int[];
    r_part text[];
    r_scope text[];
    r_value text[];
    r_lo timestamptz[];
    r_hi timestamptz[];
    e_lo timestamptz[];
    e_hi timestamptz[];
    k int;
    scan record;
BEGIN
    FOR k IN 1 .. coalesce(cardinality(p_scopes), 0) LOOP
        IF p_scopes[k] = 'tool' THEN v_tool := p_values[k];
        ELSIF p_scopes[k] = 'model' THEN v_model := p_values[k];
        ELSIF p_scopes[k] = 'user' THEN v_user := p_values[k];
        END IF;
    END LOOP;
    RETURN QUERY SELECT 'now'::text, v_now, v_grains, NULL::text, NULL::text, NULL::text, NULL::text,
        NULL::numeric, NULL::int, NULL::text, NULL::timestamptz, NULL::timestamptz, NULL::numeric,
        NULL::numeric, NULL::numeric, NULL::numeric, NULL::numeric, NULL::numeric, NULL::numeric,
        NULL::numeric;
    SELECT array_agg(w.id ORDER BY w.id, w.position), array_agg(w.scope ORDER BY w.id, w.position),
           array_agg(w.scope_value ORDER BY w.id, w.position), array_agg(w.unit ORDER BY w.id, w.position),
           array_agg(w.limit_value ORDER BY w.id, w.position),
           array_agg(w.window_seconds ORDER BY w.id, w.position)
    INTO b_id, w_scope, w_value, b_unit, b_limit, w_seconds
    FROM (
        SELECT b.id::text AS id, b.scope, b.scope_value, sw.unit, sw.limit_value, sw.window_seconds,
               sw.position
        FROM tokenscale.scoped_budgets b JOIN tokenscale.scoped_budget_windows sw ON sw.budget_id = b.id
        WHERE b.tenant = p_tenant AND (b.scope, b.scope_value) IN (SELECT * FROM unnest(p_scopes, p_values))
        UNION ALL
        SELECT 'company', 'tenant', '', 'tokens', coalesce(c.token_limit, p_company_limit),
               coalesce(c.window_days, p_company_days) * 86400, 0
        FROM (SELECT 1) AS one LEFT JOIN tokenscale.budgets c ON c.tenant = p_tenant
        WHERE coalesce(c.token_limit, p_company_limit) IS NOT NULL
    ) AS w;
    RETURN QUERY
    SELECT 'window'::text, v_now, v_grains, w.id, w.scope, w.value, w.unit, w.lim, w.seconds, NULL::text,
           NULL::timestamptz, NULL::timestamptz, NULL::numeric, NULL::numeric, NULL::numeric,
           NULL::numeric, NULL::numeric, NULL::numeric, NULL::numeric, NULL::numeric
    FROM unnest(b_id, w_scope, w_value, b_unit, b_limit, w_seconds) AS w (id, scope, value, unit, lim, seconds);
    IF w_scope IS NULL THEN
        RETURN;
    END IF;
    -- The rollup ranges and the event ranges of the tenant, tool, model and user windows (a range
    -- several windows share once), from one cut of each distinct window.
    SELECT array_agg(x.part) FILTER (WHERE x.part <> 'raw'), array_agg(x.scope) FILTER (WHERE x.part <> 'raw'),
           array_agg(x.value) FILTER (WHERE x.part <> 'raw'), array_agg(x.lo) FILTER (WHERE x.part <> 'raw'),
           array_agg(x.hi) FILTER (WHERE x.part <> 'raw'),
           array_agg(x.lo) FILTER (WHERE x.part = 'raw'), array_agg(x.hi) FILTER (WHERE x.part = 'raw')
    INTO r_part, r_scope, r_value, r_lo, r_hi, e_lo, e_hi
    FROM (
        SELECT DISTINCT CASE WHEN p.grain = 'hour' AND w.scope = 'tenant' THEN 'tenant_hour' ELSE p.grain END
                        AS part,
                        CASE WHEN p.grain = 'raw' THEN '' ELSE w.scope END AS scope,
                        CASE WHEN p.grain = 'raw' THEN '' ELSE w.value END AS value, p.lo, p.hi
        FROM (SELECT DISTINCT * FROM unnest(w_scope, w_value, w_seconds)) AS w (scope, value, seconds)
        CROSS JOIN LATERAL tokenscale.window_pieces(v_now - w.seconds * INTERVAL '1 second', v_now, v_grains) AS p
        WHERE w.scope = 'tenant' OR (v_grains AND w.scope IN ('tool', 'model', 'user'))
    ) AS x;
    IF r_part IS NOT NULL OR e_lo IS NOT NULL THEN
        RETURN QUERY
        SELECT CASE WHEN u.part = 'raw' THEN 'raw' ELSE 'rollup' END, v_now, v_grains, NULL::text,
               CASE WHEN u.part = 'raw' THEN NULL ELSE r_scope[u.i + 1] END,
               CASE WHEN u.part = 'raw' THEN NULL ELSE r_value[u.i + 1] END,
               NULL::text, NULL::numeric, NULL::int, u.part,
               CASE WHEN u.part = 'raw' THEN e_lo[u.i + 1] ELSE r_lo[u.i + 1] END,
               CASE WHEN u.part = 'raw' THEN e_hi[u.i + 1] ELSE r_hi[u.i + 1] END,
               u.t0, u.c0, u.t1, u.c1, u.t2, u.c2, u.t3, u.c3
        FROM tokenscale.budget_usage(p_tenant, v_tool, v_model, v_user,
                                     coalesce(r_part, '{}'), coalesce(r_scope, '{}'), coalesce(r_value, '{}'),
                                     coalesce(r_lo, '{}'), coalesce(r_hi, '{}'),
                                     coalesce(e_lo, '{}'), coalesce(e_hi, '{}')) AS u;
    END IF;
    -- Whole windows of events: team windows, and without grains tool, model and user windows.
    FOR scan IN
        SELECT w.scope, w.value, array_agg(DISTINCT w.seconds) AS lengths
        FROM unnest(w_scope, w_value, w_seconds) AS w (scope, value, seconds)
        WHERE w.scope = 'team' OR (NOT v_grains AND w.scope IN ('tool', 'model', 'user'))
        GROUP BY w.scope, w.value
    LOOP
        FOR k IN 1 .. cardinality(scan.lengths) LOOP
            IF scan.scope = 'team' THEN
                RETURN QUERY
                SELECT 'scan'::text, v_now, v_grains, NULL::text, scan.scope, scan.value, NULL::text,
                       NULL::numeric, scan.lengths[k], NULL::text, NULL::timestamptz, NULL::timestamptz,
                       coalesce(sum(e.input_tokens + e.cache_read_tokens + e.cache_write_tokens + e.output_tokens), 0),
                       coalesce(sum(e.cost_usd), 0), NULL::numeric, NULL::numeric, NULL::numeric,
                       NULL::numeric, NULL::numeric, NULL::numeric
                FROM tokenscale.usage_events e
                WHERE e.tenant = p_tenant AND e.counted
                  AND e.time >= v_now - scan.lengths[k] * INTERVAL '1 second' AND e.time <= v_now
                  AND e.attributes @> jsonb_build_object(p_team_key, scan.value);
            ELSE
                RETURN QUERY
                SELECT 'scan'::text, v_now, v_grains, NULL::text, scan.scope, scan.value, NULL::text,
                       NULL::numeric, scan.lengths[k], NULL::text, NULL::timestamptz, NULL::timestamptz,
                       coalesce(sum(e.input_tokens + e.cache_read_tokens + e.cache_write_tokens + e.output_tokens), 0),
                       coalesce(sum(e.cost_usd), 0), NULL::numeric, NULL::numeric, NULL::numeric,
                       NULL::numeric, NULL::numeric, NULL::numeric
                FROM tokenscale.usage_events e
                WHERE e.tenant = p_tenant AND e.counted
                  AND e.time >= v_now - scan.lengths[k] * INTERVAL '1 second' AND e.time <= v_now
                  AND CASE scan.scope WHEN 'tool' THEN e.tool = scan.value WHEN 'model' THEN e.model = scan.value
                                      ELSE coalesce(e.user_email, e.user_id) = scan.value END;
            END IF;
        END LOOP;
    END LOOP;
END
$$;

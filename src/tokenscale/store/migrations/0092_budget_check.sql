-- The budget check in one round trip (tokenscale.api.scoped_budgets.check_budgets): the windows of
-- the budgets that apply to an identity, each with its tokens and USD at p_now (the database's
-- clock when NULL), read as budget_usage (migration 0091) reads them.
--
-- tokenscale.window_pieces: the window [lo, hi] (both ends included) as ranges [lo, hi) of whole
-- hours ('hour') and of the events of its partial first and last hours ('raw'); a window within one
-- hour is one range of events. (Finer rollup grains, days and 5-minute buckets, were measured and
-- not kept: see docs/performance.md.) The tests hold it to a reference cut.
CREATE FUNCTION tokenscale.window_pieces(p_lo timestamptz, p_hi timestamptz)
RETURNS TABLE (grain text, lo timestamptz, hi timestamptz)
LANGUAGE plpgsql IMMUTABLE STRICT
AS $$
#variable_conflict use_column
DECLARE
    epoch CONSTANT timestamptz := TIMESTAMPTZ '1970-01-01 00:00:00+00';
    tick CONSTANT interval := INTERVAL '1 microsecond';
    a timestamptz := date_bin('1 hour', p_lo, epoch);
    b timestamptz := date_bin('1 hour', p_hi, epoch);
BEGIN
    IF a < p_lo THEN a := a + INTERVAL '1 hour'; END IF;
    IF a >= b THEN
        RETURN QUERY SELECT 'raw'::text, p_lo, p_hi + tick;
        RETURN;
    END IF;
    RETURN QUERY
    SELECT v.g, v.l, v.h FROM (VALUES (1, 'raw'::text, p_lo, a), (2, 'hour', a, b), (3, 'raw', b, p_hi + tick))
        AS v (n, g, l, h)
    WHERE v.l < v.h
    ORDER BY v.n;
END
$$;

-- The budget check in one call (tokenscale.api.scoped_budgets.check_budgets). Rows of two kinds:
--   'now':    checked_at (p_now, else the database's clock);
--   'window': one per window of every budget of p_tenant whose (scope, scope value) is among
--             (p_scopes[i], p_values[i]) (a tenant budget: scope 'tenant', value ''), and of the
--             company budget (tokenscale.budgets, else p_company_limit tokens over p_company_days),
--             with its tokens and USD in the window ending checked_at, and the number of its pieces
--             that found no sum (missing: always 0; the caller refuses anything else).
-- Tenant, tool, model and user windows are the sums of their pieces (window_pieces: whole hours
-- from usage_hourly or usage_scope_hourly, the events of the partial first and last hours), each
-- range read once by budget_usage. Team windows (events whose attributes hold p_team_key = the
-- team) and, without scoped rollups, tool, model and user windows sum their events.
CREATE FUNCTION tokenscale.budget_check(
    p_tenant text, p_scopes text[], p_values text[], p_now timestamptz, p_team_key text,
    p_company_limit numeric, p_company_days int
) RETURNS TABLE (kind text, checked_at timestamptz, budget_id text, scope text, scope_value text,
                 unit text, limit_value numeric, window_seconds int, tokens numeric, usd numeric,
                 missing bigint)
LANGUAGE plpgsql STABLE
SET jit = off
SET plan_cache_mode = force_generic_plan
AS $$
#variable_conflict use_column
DECLARE
    v_now timestamptz := coalesce(p_now, now());
    v_scoped boolean := to_regclass('tokenscale.usage_scope_hourly') IS NOT NULL;
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
    k_scope text[];
    k_value text[];
    k_seconds int[];
    k_part text[];
    k_lo timestamptz[];
    k_hi timestamptz[];
    x_scope text[] := '{}';
    x_value text[] := '{}';
    x_seconds int[] := '{}';
    x_t numeric[] := '{}';
    x_c numeric[] := '{}';
    v_t numeric;
    v_c numeric;
    k int;
    scan record;
BEGIN
    FOR k IN 1 .. coalesce(cardinality(p_scopes), 0) LOOP
        IF p_scopes[k] = 'tool' THEN v_tool := p_values[k];
        ELSIF p_scopes[k] = 'model' THEN v_model := p_values[k];
        ELSIF p_scopes[k] = 'user' THEN v_user := p_values[k];
        END IF;
    END LOOP;
    RETURN QUERY SELECT 'now'::text, v_now, NULL::text, NULL::text, NULL::text, NULL::text,
        NULL::numeric, NULL::int, NULL::numeric, NULL::numeric, NULL::bigint;
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
    IF w_scope IS NULL THEN
        RETURN;
    END IF;
    -- Each distinct tenant, tool, model and user window cut once (tokenscale.window_pieces).
    SELECT array_agg(w.scope), array_agg(w.value), array_agg(w.seconds),
           array_agg(CASE WHEN x.grain = 'hour' AND w.scope = 'tenant' THEN 'tenant_hour' ELSE x.grain END),
           array_agg(x.lo), array_agg(x.hi)
    INTO k_scope, k_value, k_seconds, k_part, k_lo, k_hi
    FROM (SELECT DISTINCT * FROM unnest(w_scope, w_value, w_seconds)) AS w (scope, value, seconds)
    CROSS JOIN LATERAL tokenscale.window_pieces(v_now - w.seconds * INTERVAL '1 second', v_now) AS x
    WHERE w.scope = 'tenant' OR (v_scoped AND w.scope IN ('tool', 'model', 'user'));
    -- The rollup ranges and the event ranges to read, each once however many windows share it.
    SELECT array_agg(r.part) FILTER (WHERE r.part <> 'raw'), array_agg(r.scope) FILTER (WHERE r.part <> 'raw'),
           array_agg(r.value) FILTER (WHERE r.part <> 'raw'), array_agg(r.lo) FILTER (WHERE r.part <> 'raw'),
           array_agg(r.hi) FILTER (WHERE r.part <> 'raw'),
           array_agg(r.lo) FILTER (WHERE r.part = 'raw'), array_agg(r.hi) FILTER (WHERE r.part = 'raw')
    INTO r_part, r_scope, r_value, r_lo, r_hi, e_lo, e_hi
    FROM (
        SELECT DISTINCT k.part, CASE WHEN k.part = 'raw' THEN '' ELSE k.scope END AS scope,
                        CASE WHEN k.part = 'raw' THEN '' ELSE k.value END AS value, k.lo, k.hi
        FROM unnest(k_part, k_scope, k_value, k_lo, k_hi) AS k (part, scope, value, lo, hi)
    ) AS r;
    -- Whole windows of events: team windows, and without scoped rollups tool, model and user windows.
    FOR scan IN
        SELECT w.scope, w.value, array_agg(DISTINCT w.seconds) AS lengths
        FROM unnest(w_scope, w_value, w_seconds) AS w (scope, value, seconds)
        WHERE w.scope = 'team' OR (NOT v_scoped AND w.scope IN ('tool', 'model', 'user'))
        GROUP BY w.scope, w.value
    LOOP
        FOR k IN 1 .. cardinality(scan.lengths) LOOP
            IF scan.scope = 'team' THEN
                SELECT coalesce(sum(e.input_tokens + e.cache_read_tokens + e.cache_write_tokens + e.output_tokens), 0),
                       coalesce(sum(e.cost_usd), 0)
                INTO v_t, v_c
                FROM tokenscale.usage_events e
                WHERE e.tenant = p_tenant AND e.counted
                  AND e.time >= v_now - scan.lengths[k] * INTERVAL '1 second' AND e.time <= v_now
                  AND e.attributes @> jsonb_build_object(p_team_key, scan.value);
            ELSE
                SELECT coalesce(sum(e.input_tokens + e.cache_read_tokens + e.cache_write_tokens + e.output_tokens), 0),
                       coalesce(sum(e.cost_usd), 0)
                INTO v_t, v_c
                FROM tokenscale.usage_events e
                WHERE e.tenant = p_tenant AND e.counted
                  AND e.time >= v_now - scan.lengths[k] * INTERVAL '1 second' AND e.time <= v_now
                  AND CASE scan.scope WHEN 'tool' THEN e.tool = scan.value WHEN 'model' THEN e.model = scan.value
                                      ELSE coalesce(e.user_email, e.user_id) = scan.value END;
            END IF;
            x_scope := x_scope || scan.scope;
            x_value := x_value || scan.value;
            x_seconds := x_seconds || scan.lengths[k];
            x_t := x_t || v_t;
            x_c := x_c || v_c;
        END LOOP;
    END LOOP;
    -- Every window with the sum of its pieces (and how many pieces found no sum: none).
    RETURN QUERY
    WITH s AS (
        SELECT * FROM tokenscale.budget_usage(
            p_tenant, v_tool, v_model, v_user, coalesce(r_part, '{}'), coalesce(r_scope, '{}'),
            coalesce(r_value, '{}'), coalesce(r_lo, '{}'), coalesce(r_hi, '{}'), coalesce(e_lo, '{}'),
            coalesce(e_hi, '{}'))
    ), sums AS (
        SELECT CASE WHEN s.part = 'raw' THEN 'raw' ELSE r_part[s.i + 1] END AS part,
               CASE WHEN s.part = 'raw' THEN '' ELSE r_scope[s.i + 1] END AS scope,
               CASE WHEN s.part = 'raw' THEN '' ELSE r_value[s.i + 1] END AS value,
               CASE WHEN s.part = 'raw' THEN e_lo[s.i + 1] ELSE r_lo[s.i + 1] END AS lo,
               CASE WHEN s.part = 'raw' THEN e_hi[s.i + 1] ELSE r_hi[s.i + 1] END AS hi,
               s.t0, s.c0, s.t1, s.c1, s.t2, s.c2, s.t3, s.c3
        FROM s
    ), per_window AS (
        SELECT k.scope, k.value, k.seconds,
               sum(CASE WHEN k.part <> 'raw' OR k.scope = 'tenant' THEN m.t0 WHEN k.scope = 'tool' THEN m.t1
                        WHEN k.scope = 'model' THEN m.t2 ELSE m.t3 END) AS t,
               sum(CASE WHEN k.part <> 'raw' OR k.scope = 'tenant' THEN m.c0 WHEN k.scope = 'tool' THEN m.c1
                        WHEN k.scope = 'model' THEN m.c2 ELSE m.c3 END) AS c,
               count(*) FILTER (WHERE m.part IS NULL) AS missing
        FROM unnest(k_scope, k_value, k_seconds, k_part, k_lo, k_hi) AS k (scope, value, seconds, part, lo, hi)
        LEFT JOIN sums m ON m.part = k.part AND m.lo = k.lo AND m.hi = k.hi
             AND m.scope = CASE WHEN k.part = 'raw' THEN '' ELSE k.scope END
             AND m.value = CASE WHEN k.part = 'raw' THEN '' ELSE k.value END
        GROUP BY k.scope, k.value, k.seconds
        UNION ALL
        SELECT x.scope, x.value, x.seconds, x.t, x.c, 0
        FROM unnest(x_scope, x_value, x_seconds, x_t, x_c) AS x (scope, value, seconds, t, c)
    )
    SELECT 'window'::text, v_now, w.id, w.scope, w.value, w.unit, w.lim, w.seconds, pw.t, pw.c, pw.missing
    FROM unnest(b_id, w_scope, w_value, b_unit, b_limit, w_seconds) WITH ORDINALITY
        AS w (id, scope, value, unit, lim, seconds, n)
    LEFT JOIN per_window pw ON pw.scope = w.scope AND pw.value = w.value AND pw.seconds = w.seconds
    ORDER BY w.n;
END
$$;

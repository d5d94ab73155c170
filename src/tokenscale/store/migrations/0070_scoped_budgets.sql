-- Scoped budgets: limits per tenant, team, user, tool or model, each with one or more rolling
-- windows (hours or days) in tokens or USD (tokenscale.api.scoped_budgets). The check finds the
-- budgets that apply to an identity by (tenant, scope, scope_value); scope_value is '' for the
-- tenant scope, so every lookup is an equality on the whole key.
CREATE TABLE tokenscale.scoped_budgets (
    id           uuid        PRIMARY KEY,
    tenant       text        NOT NULL,
    scope        text        NOT NULL CHECK (scope IN ('tenant', 'team', 'user', 'tool', 'model')),
    scope_value  text        NOT NULL,
    name         text        NOT NULL DEFAULT '',
    created_at   timestamptz NOT NULL DEFAULT now(),
    CHECK ((scope = 'tenant') = (scope_value = ''))
);
CREATE INDEX scoped_budgets_applies ON tokenscale.scoped_budgets (tenant, scope, scope_value);

-- A budget's windows; position keeps the order they were given in.
CREATE TABLE tokenscale.scoped_budget_windows (
    budget_id      uuid           NOT NULL REFERENCES tokenscale.scoped_budgets (id) ON DELETE CASCADE,
    position       smallint       NOT NULL,
    unit           text           NOT NULL CHECK (unit IN ('tokens', 'usd')),
    limit_value    numeric(24, 10) NOT NULL CHECK (limit_value >= 0),
    window_seconds integer        NOT NULL CHECK (window_seconds BETWEEN 3600 AND 31622400),
    PRIMARY KEY (budget_id, position)
);

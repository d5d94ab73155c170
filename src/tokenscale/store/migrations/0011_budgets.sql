-- Token budgets: per tenant (company), a limit over a ROLLING window of window_days days ending now.
-- Usage in the window is read from usage_daily for whole UTC days and from usage_events for the two
-- partial days at its edges (tokenscale.api.budgets).
CREATE TABLE tokenscale.budgets (
    tenant       text        PRIMARY KEY,
    token_limit  bigint      NOT NULL CHECK (token_limit >= 0),
    window_days  integer     NOT NULL CHECK (window_days BETWEEN 1 AND 366),
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);

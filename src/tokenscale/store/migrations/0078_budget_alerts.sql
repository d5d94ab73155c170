-- Budget alerts (tokenscale.alerts): thresholds per budget, which thresholds each budget window is
-- above (so an alert fires once per crossing, whichever process evaluates), the alerts fired, the
-- tenants' webhooks and each alert's delivery to each webhook.

-- Budget ids are text: a scoped budget's UUID, or 'company' for a tenant's company budget.

-- A budget's thresholds in percent of its limit; a budget without a row has 50, 80 and 100.
CREATE TABLE tokenscale.alert_thresholds (
    tenant      text        NOT NULL,
    budget_id   text        NOT NULL,
    percents    numeric[]   NOT NULL CHECK (cardinality(percents) BETWEEN 1 AND 20),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, budget_id)
);

-- One row per budget window and threshold: whether usage is at or above it. A crossing flips
-- above from false to true in one conditional UPDATE, so two processes never both fire it;
-- crossings numbers them (the alert's idempotency key). Usage falling below re-arms it.
CREATE TABLE tokenscale.alert_state (
    tenant          text        NOT NULL,
    budget_id       text        NOT NULL,
    unit            text        NOT NULL,
    window_seconds  integer     NOT NULL,
    percent         numeric     NOT NULL,
    above           boolean     NOT NULL DEFAULT false,
    crossings       integer     NOT NULL DEFAULT 0,
    changed_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, budget_id, unit, window_seconds, percent)
);

CREATE TABLE tokenscale.alerts (
    id               uuid        PRIMARY KEY,
    idempotency_key  text        NOT NULL UNIQUE,
    tenant           text        NOT NULL,
    budget_id        text        NOT NULL,
    scope            text        NOT NULL,
    scope_value      text        NOT NULL,
    unit             text        NOT NULL CHECK (unit IN ('tokens', 'usd')),
    window_seconds   integer     NOT NULL,
    percent          numeric     NOT NULL,
    limit_value      numeric     NOT NULL,
    used             numeric     NOT NULL,
    window_start     timestamptz NOT NULL,
    window_end       timestamptz NOT NULL,
    rate_per_hour    double precision NOT NULL,
    exhausted_at     timestamptz,
    message          text        NOT NULL,
    fired_at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX alerts_recent ON tokenscale.alerts (tenant, fired_at DESC);

-- Where a tenant's alerts go: a generic JSON body or a Slack-compatible {"text": ...}.
CREATE TABLE tokenscale.alert_webhooks (
    id          uuid        PRIMARY KEY,
    tenant      text        NOT NULL,
    url         text        NOT NULL CHECK (url ~ '^https?://'),
    format      text        NOT NULL CHECK (format IN ('json', 'slack')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant, url, format)
);

-- Each alert's delivery to each of its tenant's webhooks. A sender leases a due delivery
-- (lease_until) before it posts, so two processes never post the same one at once; it is
-- 'delivered' after a 2xx answer, retried with backoff otherwise, 'failed' after the last attempt.
CREATE TABLE tokenscale.alert_deliveries (
    alert_id         uuid        NOT NULL REFERENCES tokenscale.alerts (id) ON DELETE CASCADE,
    webhook_id       uuid        NOT NULL REFERENCES tokenscale.alert_webhooks (id) ON DELETE CASCADE,
    status           text        NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts         integer     NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    lease_until      timestamptz,
    last_error       text,
    delivered_at     timestamptz,
    PRIMARY KEY (alert_id, webhook_id)
);
CREATE INDEX alert_deliveries_due ON tokenscale.alert_deliveries (next_attempt_at)
    WHERE status = 'pending';

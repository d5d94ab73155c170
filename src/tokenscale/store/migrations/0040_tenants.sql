-- Tenants (companies): the name every row is stored under stays the label; each tenant also has a
-- UUID, the id the seed APIs name it by (Bookmore's CompanyId). A tenant whose name is itself a
-- UUID keeps that UUID as its id. Rows are made on first use (tokenscale.tenants.tenant_uuid).
CREATE TABLE tokenscale.tenants (
    name        text        PRIMARY KEY,
    id          uuid        NOT NULL UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT now()
);

INSERT INTO tokenscale.tenants (name, id)
SELECT name,
       CASE WHEN name ~* '^[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}$'
            THEN name::uuid ELSE gen_random_uuid() END
FROM (SELECT tenant AS name FROM tokenscale.api_keys
      UNION SELECT tenant FROM tokenscale.budgets) AS known
ON CONFLICT DO NOTHING;

-- Bookmore's AiChatUsageResponse declares TokenLimit an Int: new limits fit a 32-bit integer.
-- NOT VALID keeps an older, larger limit readable; the API answers it with a clear 400.
ALTER TABLE tokenscale.budgets
    ADD CONSTRAINT budgets_token_limit_int CHECK (token_limit <= 2147483647) NOT VALID;

-- Recorded chat turns by idempotency key: a retried turn reuses the first attempt's identity
-- (dedupe key and time, in ns since the epoch), so the writer stores it once.
CREATE TABLE tokenscale.chat_usage_requests (
    tenant           text        NOT NULL,
    idempotency_key  text        NOT NULL,
    time_ns          bigint      NOT NULL,
    dedupe_key       bytea       NOT NULL,
    tokens           bigint      NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, idempotency_key)
);
CREATE INDEX chat_usage_requests_age ON tokenscale.chat_usage_requests (created_at);

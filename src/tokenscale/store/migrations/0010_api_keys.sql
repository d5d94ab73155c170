-- API keys: the tenant each key acts for and what it may do. Only a SHA-256 hash of the secret is
-- kept; the secret is shown once, when the key is created (tokenscale.auth.create_key).
CREATE TABLE tokenscale.api_keys (
    id          uuid        PRIMARY KEY,
    tenant      text        NOT NULL,
    name        text        NOT NULL DEFAULT '',
    scopes      text[]      NOT NULL
                CHECK (cardinality(scopes) > 0 AND scopes <@ ARRAY['ingest', 'read', 'admin']::text[]),
    hash        bytea       NOT NULL CHECK (length(hash) = 32),
    prefix      text        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);

-- Authentication looks a key up by the hash of the presented secret.
CREATE UNIQUE INDEX api_keys_hash ON tokenscale.api_keys (hash);
CREATE INDEX api_keys_tenant ON tokenscale.api_keys (tenant, created_at);

-- The price book: the operator's own prices per model (for every tenant or one tenant), from an
-- effective time on, in USD per million tokens per disjoint token part, plus per-unit prices keyed
-- by the usage attribute counting the units. NULL cache prices take the input price, a NULL
-- reasoning price the output price.
CREATE TABLE tokenscale.prices (
    tenant            text,                                   -- NULL: every tenant
    provider          text,                                   -- NULL: any provider
    model             text           NOT NULL,
    effective_from    timestamptz    NOT NULL DEFAULT '-infinity',
    input_usd_mtok    numeric        NOT NULL CHECK (input_usd_mtok >= 0),
    cache_read_usd_mtok  numeric     CHECK (cache_read_usd_mtok >= 0),
    cache_write_usd_mtok numeric     CHECK (cache_write_usd_mtok >= 0),
    output_usd_mtok   numeric        NOT NULL CHECK (output_usd_mtok >= 0),
    reasoning_usd_mtok numeric       CHECK (reasoning_usd_mtok >= 0),
    unit_prices       jsonb          NOT NULL DEFAULT '{}',
    override_reported boolean        NOT NULL DEFAULT false,
    note              text           NOT NULL DEFAULT '',
    updated_at        timestamptz    NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX prices_key ON tokenscale.prices (model, tenant, provider, effective_from) NULLS NOT DISTINCT;

-- `tokenscale reprice` keeps the cost as first recorded beside the re-priced one.
ALTER TABLE tokenscale.usage_events
    ADD COLUMN recorded_cost_usd    numeric(20, 10),
    ADD COLUMN recorded_cost_source text,
    ADD COLUMN repriced_at          timestamptz;

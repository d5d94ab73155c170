-- A lean ledger (docs/performance.md, "Bytes per request"): usage_events keeps only the attributes
-- something reads back (tokenscale.store.attributes; every attribute with the setting
-- keep_attributes), and only the indexes the read paths use.

-- (tenant, time DESC) for every row: the read paths filter counted rows, and usage_events_read_time
-- (tenant, time DESC, dedupe_key DESC) WHERE counted answers them; the dashboard's explorer of
-- uncounted rows and `tokenscale reprice` read a time range, pruned to its partitions or chunks.
DROP INDEX IF EXISTS tokenscale.usage_events_tenant_time;

-- transactionId / messageId lookups are equalities: a hash index keeps a 4-byte hash code per row
-- instead of the tenant and the whole request id (45 instead of 95 bytes per row measured); the tenant
-- and the id itself are checked on the few rows found.
DROP INDEX IF EXISTS tokenscale.usage_events_read_request;
CREATE INDEX usage_events_read_request ON tokenscale.usage_events USING hash (request_id)
    WHERE counted AND request_id IS NOT NULL;


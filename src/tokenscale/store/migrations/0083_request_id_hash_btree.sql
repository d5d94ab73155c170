-- transactionId / messageId lookups (equalities) through a B-tree over a 64-bit hash of the request
-- id instead of a hash index (docs/performance.md, "A lean ledger").
--
-- A hash index keeps a 4-byte hash code per row, but its buckets double at each split point and are
-- half empty after one: 39-51 bytes per row measured, depending on where the row count falls between
-- two doublings. A B-tree tuple of one bigint takes 16 bytes, the least any B-tree tuple takes, and
-- randomly ordered keys leave its leaves ~70% full: ~30 bytes per row at any size. The readers
-- compare hashtextextended(request_id, 0) with the hash of the id they look for, then the id itself
-- (a 64-bit hash: rows of other ids are practically never fetched).
DROP INDEX tokenscale.usage_events_read_request;
CREATE INDEX usage_events_read_request ON tokenscale.usage_events ((hashtextextended(request_id, 0)))
    WHERE counted AND request_id IS NOT NULL;

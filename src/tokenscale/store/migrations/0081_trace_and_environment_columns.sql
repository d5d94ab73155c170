-- A lean ledger, continued (docs/performance.md, "A lean ledger"): the two attributes nearly every
-- span's row kept in usage_events.attributes get columns of their own.
--
-- * trace_id: the OTLP trace id (otel.trace_id), 16 bytes instead of 32 hex digits under a 13-byte
--   key in the jsonb, and out of the GIN index over attributes, where a value unique to each row cost
--   ~40 bytes per row; an index on its hash answers the AI metrics listing's traceId equality.
-- * environment: deployment.environment.name, the same for every row of a resource, ~11 bytes
--   instead of a 27-byte key, its value and two jsonb entries.
--
-- The writer stores new rows this way (tokenscale.store.attributes.stored_columns); rows stored
-- before keep both in attributes, and the readers take the column, else the attribute, so answers
-- are the same for old and new rows. Nullable columns without a default: no table rewrite, and
-- TimescaleDB adds them to compressed chunks too.
ALTER TABLE tokenscale.usage_events ADD COLUMN trace_id bytea;
ALTER TABLE tokenscale.usage_events ADD COLUMN environment text;

-- traceId lookups are equalities: a B-tree over a 64-bit hash of the trace id (16 bytes per index
-- tuple, the least a B-tree tuple takes; migration 0083 explains why not a hash index); the reader
-- compares the same expression, then the trace id itself.
CREATE INDEX usage_events_read_trace ON tokenscale.usage_events ((hashtextextended(encode(trace_id, 'hex'), 0)))
    WHERE counted AND trace_id IS NOT NULL;

-- The GIN index over attributes without its pending list (fastupdate): pending entries are merged
-- into the index only by a vacuum or when the list outgrows gin_pending_list_limit (4 MB per index,
-- i.e. per partition or chunk), and until then every row costs a whole pending tuple (~30 bytes per
-- row measured, for rows whose attributes are now mostly empty). Without it, a row with empty
-- attributes costs a few bytes in the index's posting list of empty items.
DROP INDEX tokenscale.usage_events_read_attributes;
CREATE INDEX usage_events_read_attributes ON tokenscale.usage_events USING gin (attributes jsonb_path_ops)
    WITH (fastupdate = off) WHERE counted;

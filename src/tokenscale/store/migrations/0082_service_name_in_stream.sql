-- A lean ledger, continued (docs/performance.md, "A lean ledger"): a row's service name is not
-- stored twice. The stream of a span's or log record's row is the service name, then \x1f and the
-- service instance (tokenscale.mapping); where service_name is that first part of the stream, the
-- writer stores NULL and the readers take split_part(stream, chr(31), 1). Rows whose service name is
-- not their stream's (the budget API's chat usage, ...) and rows stored before keep it.
-- Dropping NOT NULL changes only the catalogue (no rewrite; TimescaleDB allows it on compressed
-- hypertables).
ALTER TABLE tokenscale.usage_events ALTER COLUMN service_name DROP NOT NULL;

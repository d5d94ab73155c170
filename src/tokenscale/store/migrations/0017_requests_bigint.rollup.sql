-- A histogram's count can exceed 2^31: requests is int8 like the token columns.
ALTER TABLE tokenscale.usage_events ALTER COLUMN requests TYPE bigint;

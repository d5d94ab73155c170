#!/bin/sh
# Creates the read-only role Grafana connects as. Run once by the postgres image's entrypoint, when
# the data volume is first initialised (mounted into /docker-entrypoint-initdb.d by docker-compose.yml).
#
# pg_read_all_data (PostgreSQL 14+) grants SELECT on every table and view, including the ones
# tokenscale's migrations create later, without per-table grants; the role's sessions are read-only.
set -eu

: "${GRAFANA_DB_USER:?GRAFANA_DB_USER is not set}"
: "${GRAFANA_DB_PASSWORD:?GRAFANA_DB_PASSWORD is not set}"

psql -v ON_ERROR_STOP=1 --no-psqlrc --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    -v reader="$GRAFANA_DB_USER" -v reader_password="$GRAFANA_DB_PASSWORD" <<'SQL'
CREATE ROLE :"reader" LOGIN PASSWORD :'reader_password';
GRANT pg_read_all_data TO :"reader";
ALTER ROLE :"reader" SET default_transaction_read_only = on;
ALTER ROLE :"reader" SET statement_timeout = '60s';
SQL

#!/usr/bin/env bash
# The primary region's Postgres, first start only (docker-entrypoint-initdb.d): the role the
# standbys stream with, and the pg_hba rule that lets them. The password comes from the env file.
set -euo pipefail
: "${XREGION_REPLICATION_PASSWORD:?set XREGION_REPLICATION_PASSWORD in the env file}"
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
  -v pw="$XREGION_REPLICATION_PASSWORD" <<'SQL'
CREATE ROLE replicator WITH REPLICATION LOGIN PASSWORD :'pw';
SQL
echo "host replication replicator all scram-sha-256" >> "$PGDATA/pg_hba.conf"

#!/usr/bin/env bash
# Entry point of a standby region's Postgres. First start: clone the primary with
# `pg_basebackup -R` over the replication protocol, with a physical replication slot, which makes
# a real streaming standby (as the embedded stack does). Every start: then run postgres "$@".
# After a promotion (pg_ctl promote, or `xregion dr`), it keeps running as the new primary.
set -euo pipefail
: "${PGDATA:?}" "${XREGION_PRIMARY_HOST:?}" "${XREGION_PRIMARY_PORT:?}" "${XREGION_SLOT:?}"
: "${XREGION_REPLICATION_PASSWORD:?set XREGION_REPLICATION_PASSWORD in the env file}"
if [ "$(id -u)" = 0 ]; then  # the image starts as root: hand the data directory to postgres
  mkdir -p "$PGDATA"
  chown postgres:postgres "$PGDATA"
  chmod 700 "$PGDATA"
  exec gosu postgres bash "${BASH_SOURCE[0]}" "$@"
fi
# the walreceiver reads the password from ~/.pgpass on every (re)connection
echo "*:*:*:replicator:${XREGION_REPLICATION_PASSWORD}" > "$HOME/.pgpass"
chmod 600 "$HOME/.pgpass"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  for _ in $(seq 1 120); do
    pg_isready -q -h "$XREGION_PRIMARY_HOST" -p "$XREGION_PRIMARY_PORT" && break
    sleep 1
  done
  backup=(pg_basebackup -h "$XREGION_PRIMARY_HOST" -p "$XREGION_PRIMARY_PORT" -U replicator
          -D "$PGDATA" -R -X stream -S "$XREGION_SLOT")
  if ! "${backup[@]}" -C; then   # the slot may exist already (a standby rebuilt after data loss)
    find "$PGDATA" -mindepth 1 -delete
    "${backup[@]}"
  fi
fi
exec "$@"

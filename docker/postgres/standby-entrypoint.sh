#!/bin/bash
# A streaming standby: on first start, clone the primary with pg_basebackup -R on its own slot,
# then hand over to the official image's entrypoint.
set -euo pipefail
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  until pg_isready -h "$PRIMARY_HOST" -p 5432 -q; do sleep 1; done
  export PGPASSWORD="$REPLICATION_PASSWORD"
  pg_basebackup -h "$PRIMARY_HOST" -p 5432 -U replicator -D "$PGDATA" \
    -X stream -R -S "$SLOT_NAME" -c fast -d "application_name=$SLOT_NAME"
  chown -R postgres:postgres "$PGDATA"
  chmod 700 "$PGDATA"
fi
exec docker-entrypoint.sh "$@"

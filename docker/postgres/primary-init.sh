#!/bin/bash
# Runs once, inside the official postgres image, when the primary's data directory is new.
set -euo pipefail
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" <<SQL
CREATE ROLE replicator WITH REPLICATION LOGIN PASSWORD '${REPLICATION_PASSWORD}';
SELECT pg_create_physical_replication_slot('node2');
SELECT pg_create_physical_replication_slot('node3');
SQL
echo "host replication replicator all scram-sha-256" >> "$PGDATA/pg_hba.conf"

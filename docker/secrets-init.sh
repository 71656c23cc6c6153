#!/bin/sh
# Runs once before every other service: a random secret for each name given, as a file in
# the secrets volume ($1), unless one is there already — put your own there before the
# first `docker compose up` to choose them. Services read them as files, never from the
# environment; `docker compose exec pg-node1 cat /run/lifeboat/pg_password` shows one.
set -eu
dir=$1
shift
umask 022  # every service's account reads them: nobody (services), postgres (nodes)
for name in "$@"; do
  if [ ! -s "$dir/$name" ]; then
    python -c 'import secrets; print(secrets.token_urlsafe(24))' > "$dir/$name.part"
    mv "$dir/$name.part" "$dir/$name"
  fi
done

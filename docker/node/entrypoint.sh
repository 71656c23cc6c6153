#!/bin/sh
# A PostgreSQL node's container: its data directory made or started (lifeboat.agent.boot),
# then its agent, which guards it from then on. The container lives as long as this script:
# a node the agent stopped (fenced, or for a rejoin) leaves it up, and an agent that exits
# is started again (its watchdog stops a primary it no longer vouches for meanwhile).
set -u
child=
stopping=
on_stop() {
  # `docker stop`: PostgreSQL first, cleanly, then the agent — an agent stopped first would
  # leave its watchdog to SIGKILL a primary still shutting down.
  stopping=1
  python -m lifeboat.agent.boot --stop || true
  [ -z "$child" ] || kill -TERM "$child" 2>/dev/null || true
}
trap on_stop TERM INT

run() {
  # "$@" in the background, so that a stop is heard while it runs; its exit status.
  "$@" &
  child=$!
  while :; do
    wait "$child"
    status=$?
    kill -0 "$child" 2>/dev/null || break  # gone: that was its status (else a trap woke us)
  done
  child=
  return "$status"
}

if ! run python -m lifeboat.agent.boot; then
  [ -n "$stopping" ] && exit 0
  exit 1  # not started, and it said why: the restart policy tries again
fi
while [ -z "$stopping" ]; do
  run python -m lifeboat.agent
  [ -n "$stopping" ] || { echo "the agent exited ($status); starting it again in 1 s" >&2; sleep 1; }
done

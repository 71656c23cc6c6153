#!/bin/sh
# A PostgreSQL node's container: its data directory made or started (lifeboat.agent.boot),
# then its agent, which guards it from then on. The agent is what the container waits on:
# a node the agent stopped (fenced, or for a rejoin) leaves the container up.
set -eu
python -m lifeboat.agent.boot
python -m lifeboat.agent &
agent=$!
# `docker stop`: PostgreSQL first, cleanly, then the agent — an agent stopped first would
# leave its watchdog to SIGKILL a primary still shutting down.
trap 'python -m lifeboat.agent.boot --stop; kill -TERM "$agent" 2>/dev/null || true' TERM INT
status=0
wait "$agent" || status=$?
# A trapped signal ends the first wait; the second waits for the agent to be gone.
wait "$agent" 2>/dev/null || true
exit "$status"

# One image per service, each with only its own dependencies:
#   docker build --build-arg SERVICE=backup -t lifeboat-backup .
# A PostgreSQL node is the agent's image run as postgres (SERVICE=agent, RUN_AS=postgres): its
# entrypoint, docker/node/entrypoint.sh, starts the server and then the agent that guards it.
# Bookworm: its postgresql-15 is the server the nodes and tools must match.
FROM python:3.11-slim-bookworm
ARG SERVICE
ARG RUN_AS=nobody
RUN test -n "$SERVICE" || (echo "build with --build-arg SERVICE=<monitor|failover|backup|filesync|gateway|agent>" && exit 1)
# The PostgreSQL 15 server binaries (the client package alone lacks pg_ctl, pg_rewind and
# initdb): pg_dump / pg_basebackup / pg_receivewal for backup, scratch instances for restores.
RUN apt-get update \
    && apt-get install -y --no-install-recommends postgresql-15 \
    && rm -rf /var/lib/apt/lists/*
RUN pip install --no-cache-dir "uv>=0.5"
WORKDIR /app
COPY pyproject.toml uv.lock ./
COPY libs ./libs
COPY services ./services
RUN uv sync --frozen --no-dev --no-editable --package "lifeboat-${SERVICE}"
# The node entrypoint and secrets-init's script (and the compose files they read).
COPY docker ./docker
# The service's volume: a node's data directory and what its agent keeps beside it, the
# backup service's WAL spool and scratch restores.
RUN install -d -o "${RUN_AS}" -m 0750 /var/lib/lifeboat
ENV PATH=/app/.venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    LIFEBOAT_HTTP_HOST=0.0.0.0
USER ${RUN_AS}

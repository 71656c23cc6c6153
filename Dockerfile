# One image per service, each with only its own dependencies:
#   docker build --build-arg SERVICE=backup -t lifeboat-backup .
FROM python:3.11-slim
ARG SERVICE
RUN test -n "$SERVICE" || (echo "build with --build-arg SERVICE=<monitor|failover|backup|filesync|gateway>" && exit 1)
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
ENV PATH=/app/.venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    LIFEBOAT_HTTP_HOST=0.0.0.0
USER nobody

"""Real servers as local processes, for `make up` and for the test fixtures: NATS with
JetStream, SeaweedFS as S3, and a replicated PostgreSQL cluster."""

"""Lifeboat backup service: Streams pg_dump / pg_basebackup and WAL into S3, verifies and restores them."""

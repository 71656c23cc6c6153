"""Lifeboat backup service: pg_dump / pg_basebackup and WAL into S3, verified, restorable."""

"""Object storage shared by backup and filesync: S3 clients, buckets, health, transfers."""

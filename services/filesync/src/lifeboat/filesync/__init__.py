"""Lifeboat filesync service: Replicates application file directories to S3 and back, checksummed."""

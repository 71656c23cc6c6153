"""Lifeboat filesync service: application file directories to S3 and back, checksummed."""

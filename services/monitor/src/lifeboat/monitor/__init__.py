"""Lifeboat monitor service: probes every PostgreSQL node and publishes node.health."""

"""Lifeboat monitor service: Probes every PostgreSQL node and publishes node.health events."""

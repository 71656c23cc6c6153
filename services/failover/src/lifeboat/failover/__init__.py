"""Lifeboat failover service: failovers and switchovers under a lease in JetStream KV."""

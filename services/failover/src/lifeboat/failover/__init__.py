"""Lifeboat failover service: Decides and performs failovers and switchovers under a lease in JetStream KV."""

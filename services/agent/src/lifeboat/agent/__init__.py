"""Lifeboat node agent: one beside each PostgreSQL node, meeting the rest only over NATS.

It stops its own node when the node is writable and the agent cannot confirm, within a
bounded time, that the topology names it primary at the current epoch (`guard`); while NATS
is unreachable, a primary whose agent hears from every other member's agent keeps serving
(`failsafe`).
"""

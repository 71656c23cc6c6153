"""Lifeboat gateway: the REST API for clients and the `lifeboat` CLI."""

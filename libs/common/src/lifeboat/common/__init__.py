"""Lifeboat's shared contract: the one place that defines subjects, events and shared state."""

"""Lifeboat monitor service: probes every PostgreSQL node and publishes node.health.

The names below are its public entry points, for benchmarks and the dev stack; everything
else is internal.
"""

from lifeboat.monitor.monitor import Monitor
from lifeboat.monitor.probe import NodeProber
from lifeboat.monitor.transitions import Thresholds

__all__ = ["Monitor", "NodeProber", "Thresholds"]

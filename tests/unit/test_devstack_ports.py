"""A stack's ports are picked before any is bound: no two picks, or derived ports, may meet."""

from __future__ import annotations

from pathlib import Path

import pytest

from lifeboat.devstack.procs import free_port
from lifeboat.devstack.servers import S3Ports
from lifeboat.devstack.settings import StackSettings
from lifeboat.devstack.stack import Stack, StackError


def test_free_ports_and_the_ports_they_span_are_never_handed_out_twice() -> None:
    taken: set[int] = set()
    for _ in range(50):
        base = free_port(span=range(4))
        span = set(range(base, base + 4))
        assert not span & taken
        taken |= span
    s3 = S3Ports.free()
    grpc = {p + 10000 for p in (s3.s3, s3.master, s3.volume, s3.filer)}
    assert max(grpc) < 32768
    assert not grpc & taken


def test_a_stack_given_one_port_twice_refuses_to_start_and_names_both(tmp_path: Path) -> None:
    settings = StackSettings(stack_dir=tmp_path, nats_port=21000, s3_port=11000)
    with pytest.raises(StackError, match=r"21000 \(nats 1 and s3 grpc\)"):
        Stack(settings)._check_ports()

"""Test hosts: network namespaces joined by a bridge, for tests of what crosses a network.

Each host is a namespace with one veth link to a bridge the test creates, an address in
198.18.0.0/24 (the range reserved for network tests) and no default route, so nothing it runs
can reach beyond the test network. The root namespace holds 198.18.0.1 on the bridge: the
controller's host. Partitions are made by cutting a host's link, or by blackhole routes inside
a namespace (one host cut off from some peers only). Everything is torn down on exit, even on
failure; processes left in a namespace are killed by PID first.

Needs root and `ip` (iproute2); `available()` says why not when it cannot work.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

NETWORK = "198.18.0"
CONTROLLER = f"{NETWORK}.1"


def available() -> str | None:
    """None when test hosts can be made here, else the reason they cannot."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "`ip` (iproute2) is not installed"
    return None


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@dataclass
class TestHost:
    __test__ = False  # not a pytest test class

    name: str
    netns: str
    address: str
    link: str  # the bridge side of its veth pair
    blocked: set[str] = field(default_factory=set)

    def command(self, argv: Sequence[str]) -> list[str]:
        """`argv` run inside this host's namespace."""
        return ["ip", "netns", "exec", self.netns, *argv]

    def cut(self) -> None:
        """The host loses its link: nothing reaches it, it reaches nothing."""
        _ip("link", "set", self.link, "down")

    def mend(self) -> None:
        _ip("link", "set", self.link, "up")

    def block(self, *peers: str) -> None:
        """Drop what this host sends to `peers` (TCP to or from them then fails both ways)."""
        for peer in peers:
            _ip("netns", "exec", self.netns, "ip", "route", "add", "blackhole", f"{peer}/32")
            self.blocked.add(peer)

    def unblock(self) -> None:
        for peer in sorted(self.blocked):
            with contextlib.suppress(subprocess.CalledProcessError):
                _ip("netns", "exec", self.netns, "ip", "route", "del", "blackhole", f"{peer}/32")
        self.blocked.clear()

    def pids(self) -> list[int]:
        out = subprocess.run(
            ["ip", "netns", "pids", self.netns], capture_output=True, text=True, timeout=10
        ).stdout
        return [int(p) for p in out.split()]


class TestNetwork:
    """A bridge and the test hosts on it; use as a context manager."""

    __test__ = False  # not a pytest test class

    def __init__(self) -> None:
        self.tag = secrets.token_hex(3)
        self.bridge = f"lbbr{self.tag}"
        self.hosts: dict[str, TestHost] = {}

    def __enter__(self) -> TestNetwork:
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{CONTROLLER}/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        return self

    def add(self, name: str) -> TestHost:
        index = len(self.hosts) + 2
        host = TestHost(
            name=name,
            netns=f"lb{self.tag}{name}",
            address=f"{NETWORK}.{index}",
            link=f"lbv{self.tag}{index}",
        )
        peer = f"lbp{self.tag}{index}"
        _ip("netns", "add", host.netns)
        self.hosts[name] = host
        _ip("link", "add", host.link, "type", "veth", "peer", "name", peer)
        _ip("link", "set", peer, "netns", host.netns)
        _ip("link", "set", host.link, "master", self.bridge)
        _ip("link", "set", host.link, "up")
        inside = ("netns", "exec", host.netns, "ip")
        _ip(*inside, "addr", "add", f"{host.address}/24", "dev", peer)
        _ip(*inside, "link", "set", peer, "up")
        _ip(*inside, "link", "set", "lo", "up")
        return host

    def __exit__(self, *exc: object) -> None:
        for host in self.hosts.values():
            for pid in host.pids():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.CalledProcessError):
                _ip("link", "del", host.link)
            with contextlib.suppress(subprocess.CalledProcessError):
                _ip("netns", "del", host.netns)
        with contextlib.suppress(subprocess.CalledProcessError):
            _ip("link", "del", self.bridge)


@contextlib.contextmanager
def network_of(*names: str) -> Iterator[TestNetwork]:
    """A network with a test host for each of `names`, torn down on exit."""
    with TestNetwork() as net:
        for name in names:
            net.add(name)
        yield net

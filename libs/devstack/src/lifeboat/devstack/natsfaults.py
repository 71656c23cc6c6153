"""Faults injected into the stack's NATS servers, for the drills of fault-matrix scenario 7.

The servers are the ones `make up` started, found by their PIDs in the stack's
`children.json` and read from the config files they were started with. All of them are
stopped and started again (each from its own config, as the drill's children, stopped by PID
when it is done: the stack does not restart a NATS server that exited), their stores copied
and put back (a store rolled back past a failover), or JetStream filled by a stream of its own
until it refuses for want of space.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
import signal
import time
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import nats
from nats.js.api import StreamConfig
from nats.js.errors import APIError, NoStreamResponseError

from lifeboat.common import bus, subjects
from lifeboat.common.kv import TOPOLOGY_BUCKET
from lifeboat.devstack.procs import ManagedProcess, find_binary, kill_pid, wait_until

# JetStream's answer to a write it has no room for (a publish, a KV put).
NO_SPACE = "insufficient resources"
FILLER = "LIFEBOAT_DRILL_FILLER"
_SETTING = re.compile(r'^\s*(\w+):\s*"?([^"]*?)"?\s*$')


@dataclass(frozen=True)
class NatsConfig:
    """One server as its config file says: where it stores, where it answers."""

    file: Path
    store_dir: Path
    client: str
    monitor: str
    max_file_store: int | None


def parse_config(file: Path, text: str) -> NatsConfig:
    """The settings the drills need from a config `NatsServer` wrote. The first `listen` is
    the client's (the cluster block, later, has the routes')."""
    found: dict[str, str] = {}
    for line in text.splitlines():
        match = _SETTING.match(line)
        if match:
            found.setdefault(match[1], match[2])
    limit = found.get("max_file_store")
    return NatsConfig(
        file=file,
        store_dir=Path(found["store_dir"]),
        client=f"nats://{found['listen']}",
        monitor=f"http://{found['http']}",
        max_file_store=int(limit) if limit else None,
    )


def _config_of(pid: int) -> Path | None:
    """The config file of a running nats-server (None: not one, or it ended)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    except OSError:
        return None
    if not argv or not argv[0].endswith("nats-server") or "--config" not in argv:
        return None
    return Path(argv[argv.index("--config") + 1])


def _gone(pid: int) -> bool:
    """The process ended (a zombie its parent has not reaped yet counts as ended)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[0] == "Z"


def _healthy(config: NatsConfig) -> bool:
    """The full health check: in a cluster, a meta leader and every stream current."""
    try:
        with urllib.request.urlopen(f"{config.monitor}/healthz", timeout=1) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


class StackNats:
    """The stack's NATS servers, stopped and started again by the drill."""

    def __init__(self, stack_dir: Path) -> None:
        self.stack_dir = stack_dir
        self._configs: list[NatsConfig] = []
        self._stack_pids: dict[Path, int] = {}
        self._own: dict[Path, ManagedProcess] = {}

    @property
    def configs(self) -> list[NatsConfig]:
        """Every server, as found running the first time asked."""
        if not self._configs:
            file = self.stack_dir / "children.json"
            pids = json.loads(file.read_text() or "[]") if file.exists() else []
            for pid in pids:
                config = _config_of(int(pid))
                if config is not None:
                    self._stack_pids[config] = int(pid)
                    self._configs.append(parse_config(config, config.read_text()))
            if not self._configs:
                raise RuntimeError(f"no NATS server of the stack in {file} runs")
        return self._configs

    @property
    def urls(self) -> list[str]:
        return [c.client for c in self.configs]

    def stop(self) -> None:
        """Every server stopped (SIGTERM: it flushes its store), until each has exited."""
        for config in self.configs:
            own = self._own.pop(config.file, None)
            if own is not None:
                own.stop(timeout=30)
            pid = self._stack_pids.pop(config.file, None)
            if pid is not None and not _gone(pid):
                kill_pid(pid, signal.SIGTERM)
                wait_until(partial(_gone, pid), timeout=30, what=f"nats-server {pid} to exit")

    def start(self, timeout: float = 90) -> datetime:
        """Every server started from its config, once the cluster and its streams and KV
        buckets answer; when they were started."""
        started = datetime.now(UTC)
        for config in self.configs:
            proc = ManagedProcess(
                config.file.stem,
                [find_binary("nats-server"), "--config", str(config.file)],
                log_file=self.stack_dir / f"drill-{config.file.stem}.log",
            )
            proc.start()
            self._own[config.file] = proc
        for config in self.configs:
            wait_until(partial(_healthy, config), timeout=timeout, what=config.file.stem)
        asyncio.run(_wait_answering(self.urls, timeout))
        return started

    def restarted(self, *, take: Path | None = None, put: Path | None = None) -> datetime:
        """All stopped, each store copied to `take/<server>` or replaced by `put/<server>`,
        all started again; when they were started."""
        self.stop()
        for config in self.configs:
            name = config.file.stem
            if take is not None:
                shutil.copytree(config.store_dir, take / name)
            if put is not None:
                shutil.rmtree(config.store_dir)
                shutil.copytree(put / name, config.store_dir)
        return self.start()

    def close(self) -> None:
        """The servers the drill started, stopped (the stack's own it only ever stopped)."""
        for proc in self._own.values():
            proc.stop(timeout=30)
        self._own.clear()

    def fill(self) -> int:
        """JetStream filled by a stream of the drill's own (R3, so every server's store is
        full) until it refuses for want of space; the bytes it took."""
        return asyncio.run(_fill(self.urls))

    def drop_filler(self) -> None:
        """The filler deleted: its space is free again."""
        asyncio.run(_js_call(self.urls, lambda js: js.delete_stream(FILLER)))

    def topology(self, cluster: str) -> bytes | None:
        """The topology record as stored (what the failover service and the agents read),
        not the gateway's copy of it."""
        return asyncio.run(_topology(self.urls, cluster))

    def put_topology(self, cluster: str, record: bytes) -> None:
        """A topology record written back by hand, as an operator restores one."""
        asyncio.run(_js_call(self.urls, lambda js: _put_topology(js, cluster, record)))

    def last_event(self, subject: str) -> dict[str, Any] | None:
        """The newest event the store holds on `subject`, read from the store itself (not
        through the gateway, whose consumers a restart of NATS may have left behind)."""
        return asyncio.run(_last_event(self.urls, subject))


async def _wait_answering(urls: list[str], timeout: float) -> None:
    """Until both streams and the topology bucket answer (each has a leader)."""
    deadline = time.monotonic() + timeout
    nc = await nats.connect(urls, connect_timeout=2, max_reconnect_attempts=-1)
    try:
        js = nc.jetstream(timeout=2)
        while True:
            try:
                for stream in (subjects.STREAM_NAME, subjects.HEARTBEAT_STREAM_NAME):
                    await js.stream_info(stream)
                await js.stream_info(f"KV_{TOPOLOGY_BUCKET}")
                return
            except (nats.errors.Error, APIError):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"JetStream did not answer within {timeout}s") from None
                await asyncio.sleep(0.5)
    finally:
        await nc.close()


async def _js_call(urls: list[str], call: Any) -> Any:
    nc = await nats.connect(urls, connect_timeout=2)
    try:
        return await call(nc.jetstream(timeout=10))
    finally:
        await nc.close()


async def _fill(urls: list[str]) -> int:
    blob = b"x" * (512 * 1024)
    subject = "lifeboat.drill.filler"
    nc = await nats.connect(urls, connect_timeout=2)
    try:
        js = nc.jetstream(timeout=10)
        await js.add_stream(StreamConfig(name=FILLER, subjects=[subject], num_replicas=3))
        await bus.wait_for_leader(js, FILLER)
        stored = misses = 0
        for _ in range(100_000):  # bounded: 50 GB
            try:
                await js.publish(subject, blob)
            except APIError as exc:
                if NO_SPACE in str(exc):
                    return stored * len(blob)
                raise
            except (nats.errors.NoRespondersError, NoStreamResponseError, nats.errors.TimeoutError):
                # On a loaded machine the filler's leader can move mid-fill (a drill aborted
                # so at run 11 of 20): fill on once it has one, until JetStream says no space.
                misses += 1
                if misses > 20:
                    raise
                await bus.wait_for_leader(js, FILLER)
                continue
            stored += 1
        raise RuntimeError("JetStream never ran out of space: is a store limit set?")
    finally:
        await nc.close()


async def _last_event(urls: list[str], subject: str) -> dict[str, Any] | None:
    nc = await nats.connect(urls, connect_timeout=2)
    try:
        js = nc.jetstream(timeout=5)
        with contextlib.suppress(nats.js.errors.NotFoundError):
            msg = await js.get_last_msg(subjects.STREAM_NAME, subject)
            found = json.loads(msg.data or b"null")
            return found if isinstance(found, dict) else None
        return None
    finally:
        await nc.close()


async def _topology(urls: list[str], cluster: str) -> bytes | None:
    nc = await nats.connect(urls, connect_timeout=2)
    try:
        kv = await nc.jetstream(timeout=5).key_value(TOPOLOGY_BUCKET)
        with contextlib.suppress(nats.js.errors.KeyNotFoundError):
            return (await kv.get(cluster)).value
        return None
    finally:
        await nc.close()


async def _put_topology(js: Any, cluster: str, record: bytes) -> None:
    kv = await js.key_value(TOPOLOGY_BUCKET)
    await kv.put(cluster, record)

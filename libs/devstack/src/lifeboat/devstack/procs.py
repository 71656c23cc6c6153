"""Child processes that are always stopped by PID, and the small waits around them."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from pathlib import Path
from typing import IO, TypeVar, overload

from lifeboat.pg.osuser import OsUser


def find_binary(name: str) -> str:
    """A binary installed beside this interpreter (PyPI packages put them there), or on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"{name} not found beside {sys.executable} nor on PATH")
    return found


# Ports this process has handed out: a stack's dozen ports are picked before any is bound, so
# without this two picks (or one pick and another's derived port) can coincide.
_handed_out: set[int] = set()


def free_port(below: int = 30000, span: Iterable[int] = (0,)) -> int:
    """A free loopback port P, with P+offset free too for each offset in `span`, none of them
    handed out before by this process. SeaweedFS listens on port+10000 for gRPC and a stack's
    NATS servers and PostgreSQL nodes take consecutive ports: their callers pass `span` (and
    `below`, to keep every port under 32768, clear of ephemeral client ports)."""
    offsets = tuple(span)
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port: int = s.getsockname()[1]
        candidate = port if port < below else 10000 + (port % (below - 10000))
        wanted = {candidate + offset for offset in offsets}
        if not wanted & _handed_out and all(port_is_free(p) for p in wanted):
            _handed_out.update(wanted)
            return candidate
    raise RuntimeError("no free port found")


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


T = TypeVar("T")


def _timed_out(timeout: float, what: str, detail: Callable[[], str] | None) -> TimeoutError:
    message = f"timed out after {timeout}s waiting for {what}"
    return TimeoutError(f"{message}\n{detail()}" if detail is not None else message)


def wait_until(
    condition: Callable[[], object],
    *,
    timeout: float,
    what: str,
    interval: float = 0.2,
    detail: Callable[[], str] | None = None,
) -> None:
    """Block until `condition()` is truthy; TimeoutError naming `what` (and `detail()`) if not
    within `timeout` seconds. An exception from `condition` ends the wait at once."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(interval)
    raise _timed_out(timeout, what, detail)


@overload
async def eventually(
    condition: Callable[[], Awaitable[T | None]],
    *,
    timeout: float,
    what: str,
    interval: float = 0.2,
    detail: Callable[[], str] | None = None,
) -> T: ...
@overload
async def eventually(
    condition: Callable[[], T | None],
    *,
    timeout: float,
    what: str,
    interval: float = 0.2,
    detail: Callable[[], str] | None = None,
) -> T: ...
async def eventually(
    condition: Callable[[], object],
    *,
    timeout: float,
    what: str,
    interval: float = 0.2,
    detail: Callable[[], str] | None = None,
) -> object:
    """`wait_until` for async code: poll `condition` (plain or async) without blocking the loop
    until it returns something truthy, and return that value. It is asked at least once, and
    once more at the deadline; then TimeoutError naming `what`, followed by `detail()`."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        left = deadline - time.monotonic()
        if left <= 0:
            raise _timed_out(timeout, what, detail)
        await asyncio.sleep(min(interval, left))


def tcp_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


LineSink = Callable[[str], None]


class ManagedProcess:
    """A child in its own session, so stopping it reaches everything it spawned."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        user: OsUser | None = None,
        log_file: Path | None = None,
        on_line: LineSink | None = None,
        stop_signal: signal.Signals = signal.SIGTERM,
    ) -> None:
        self.name = name
        self.stop_signal = stop_signal
        self.argv = list(argv)
        self.env = env
        self.cwd = cwd
        self.user = user
        self.log_file = log_file
        self.on_line = on_line
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._reader: threading.Thread | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def exit_code(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def log_tail(self, lines: int = 15) -> str:
        """The last lines of its log file (empty when it logs elsewhere): why it exited."""
        if self.log_file is None or not self.log_file.exists():
            return ""
        return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])

    def start(self) -> None:
        stdout: int | IO[bytes]
        if self.on_line is not None:
            stdout = subprocess.PIPE
        elif self.log_file is not None:
            self._log = self.log_file.open("ab")
            stdout = self._log
        else:
            stdout = subprocess.DEVNULL
        self.proc = subprocess.Popen(
            self.argv,
            env=self.env,
            cwd=self.cwd,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            user=self.user.switch_uid if self.user else None,
            group=self.user.switch_gid if self.user else None,
            extra_groups=self.user.switch_groups if self.user else None,
        )
        if self.on_line is not None:
            self._reader = threading.Thread(target=self._pump, daemon=True, name=self.name)
            self._reader.start()

    def _pump(self) -> None:
        assert self.proc is not None
        assert self.proc.stdout is not None
        assert self.on_line is not None
        for raw in self.proc.stdout:
            self.on_line(raw.decode("utf-8", errors="replace").rstrip())

    def signal(self, sig: signal.Signals) -> None:
        if self.alive():
            assert self.proc is not None
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)

    def stop(self, timeout: float = 10.0) -> int | None:
        """Signal the process group to stop, then SIGKILL what is left after `timeout`."""
        if self.proc is None:
            return None
        if self.alive():
            self.signal(self.stop_signal)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                self.proc.wait(5)
        if self._reader is not None:
            self._reader.join(2)
        if self._log is not None:
            self._log.close()
            self._log = None
        return self.proc.returncode


def kill_pid(pid: int, sig: signal.Signals = signal.SIGKILL) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)

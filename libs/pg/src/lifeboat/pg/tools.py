"""Running PostgreSQL's tools: to completion (sync or async) or streamed, one typed error.

Every run is bounded in time and runs as the PostgreSQL OS user when we are root. A tool that
fails raises `ToolError` with its name, exit code and (redacted) output, whatever the caller.
`env` adds to the inherited environment; a password goes in as `PGPASSWORD` there, never on
the command line, where `ps` would show it.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import subprocess
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from lifeboat.common.redact import redact
from lifeboat.pg.osuser import OsUser


class ToolError(RuntimeError):
    """A PostgreSQL tool exited non-zero, or did not finish in time."""

    def __init__(self, tool: str, returncode: int | None, output: str) -> None:
        self.tool = tool
        self.returncode = returncode
        self.output = redact(output.strip())
        what = "timed out" if returncode is None else f"failed ({returncode})"
        super().__init__(f"{tool} {what}: {self.output}")


def _environment(env: dict[str, str] | None) -> dict[str, str] | None:
    return None if env is None else {**os.environ, **env}


def _user_kwargs(user: OsUser | None) -> dict[str, Any]:
    if user is None:
        return {}
    return {"user": user.switch_uid, "group": user.switch_gid, "extra_groups": user.switch_groups}


def _async_user_kwargs(user: OsUser | None) -> dict[str, Any]:
    """For asyncio's subprocesses: uvloop (which uvicorn picks when installed) refuses
    Popen's user/group arguments, so the switch happens in the child before exec."""
    if user is None or user.is_current:
        return {}
    uid, gid = user.uid, user.gid

    def switch() -> None:
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)

    return {"preexec_fn": switch}


def run(
    argv: Sequence[str],
    *,
    user: OsUser | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 120,
    input_text: str | None = None,
) -> str:
    """Run a tool to completion and return its standard output."""
    tool = Path(argv[0]).name
    try:
        result = subprocess.run(
            list(argv),
            env=_environment(env),
            input=input_text,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            **_user_kwargs(user),
        )
    except subprocess.TimeoutExpired as exc:
        raise ToolError(tool, None, f"no exit within {timeout:g}s") from exc
    if result.returncode != 0:
        raise ToolError(tool, result.returncode, result.stderr or result.stdout)
    return str(result.stdout)


async def run_async(
    argv: Sequence[str],
    *,
    user: OsUser | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 120,
) -> str:
    """`run` without blocking the event loop: for the long tools (pg_rewind, pg_basebackup)."""
    async with stream(argv, user=user, env=env, timeout=timeout) as proc:
        assert proc.stdout is not None
        out = await proc.stdout.read()
    return out.decode(errors="replace")


@contextlib.asynccontextmanager
async def stream(
    argv: Sequence[str],
    *,
    user: OsUser | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 3600,
    stdin: int | None = subprocess.DEVNULL,
) -> AsyncIterator[asyncio.subprocess.Process]:
    """A tool whose standard output (and input) the caller streams; pg_dump into S3, say.

    On leaving the block the tool must have exited 0 within `timeout` of its start, else
    `ToolError`; a caller that leaves early (an exception) kills it, so nothing lingers.
    """
    async with stream_logged(argv, user=user, env=env, timeout=timeout, stdin=stdin) as (proc, _):
        yield proc


class Stderr:
    """What a streamed tool wrote to its standard error so far, line by line (pg_basebackup
    -v reports its start and end LSNs there)."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    async def pump(self, reader: asyncio.StreamReader) -> None:
        while line := await reader.readline():
            self.lines.append(line.decode(errors="replace").rstrip("\n"))
            # A chatty tool must not grow this without bound: keep the first and last lines.
            if len(self.lines) > 2000:
                del self.lines[100:1100]


@contextlib.asynccontextmanager
async def stream_logged(
    argv: Sequence[str],
    *,
    user: OsUser | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 3600,
    stdin: int | None = subprocess.DEVNULL,
) -> AsyncIterator[tuple[asyncio.subprocess.Process, Stderr]]:
    """`stream`, also handing over the tool's standard error as it is written."""
    tool = Path(argv[0]).name
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=stdin,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_environment(env),
        **_async_user_kwargs(user),
    )
    assert proc.stderr is not None
    log = Stderr()
    errors = asyncio.ensure_future(log.pump(proc.stderr))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    try:
        yield proc, log
        try:
            async with asyncio.timeout_at(deadline):
                code = await proc.wait()
                await errors
        except TimeoutError:
            raise ToolError(tool, None, f"no exit within {timeout:g}s") from None
        if code != 0:
            raise ToolError(tool, code, log.text)
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
        errors.cancel()


@contextlib.asynccontextmanager
async def stream_fd(
    argv: Sequence[str],
    *,
    user: OsUser | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 3600,
    stdin: int | None = subprocess.DEVNULL,
) -> AsyncIterator[tuple[asyncio.subprocess.Process, Stderr, int]]:
    """`stream_logged`, with the tool's stdout as a plain pipe file descriptor for a thread
    to read with big blocking reads: asyncio's pipe transport moves bulk data (a dump, a base
    backup) in 64 KiB steps on the event loop, far slower than the tools write it."""
    tool = Path(argv[0]).name
    read_end, write_end = os.pipe()
    with contextlib.suppress(OSError, AttributeError):
        # A bigger pipe (Linux): fewer wake-ups of the tool and of the reader.
        fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, 1024 * 1024)
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=stdin,
            stdout=write_end,
            stderr=subprocess.PIPE,
            env=_environment(env),
            **_async_user_kwargs(user),
        )
    except BaseException:
        os.close(read_end)
        raise
    finally:
        os.close(write_end)
    assert proc.stderr is not None
    log = Stderr()
    errors = asyncio.ensure_future(log.pump(proc.stderr))
    deadline = asyncio.get_running_loop().time() + timeout
    try:
        yield proc, log, read_end
        try:
            async with asyncio.timeout_at(deadline):
                code = await proc.wait()
                await errors
        except TimeoutError:
            raise ToolError(tool, None, f"no exit within {timeout:g}s") from None
        if code != 0:
            raise ToolError(tool, code, log.text)
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
        errors.cancel()
        with contextlib.suppress(OSError):
            os.close(read_end)

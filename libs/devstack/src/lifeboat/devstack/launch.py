"""One way to run a Lifeboat service as a child: `python -m lifeboat.<service>` with a given
environment, in its own session, stopped by PID. The tests and the benchmarks start their
services through here."""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from lifeboat.devstack.procs import LineSink, ManagedProcess, free_port, wait_until

HOST = "127.0.0.1"


def module_argv(module: str, *args: str) -> list[str]:
    """`python -m <module> args...` with this interpreter (the workspace venv's)."""
    return [sys.executable, "-m", module, *args]


def service_env(
    *,
    nats_url: str,
    clusters_file: Path,
    pg_password: str,
    extra: Mapping[str, str] | None = None,
    base: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """What every service needs to find NATS and the clusters: `base` (this process's
    environment unless given) plus those settings, then `extra` (e.g. the S3 settings)."""
    return {
        **(os.environ if base is None else base),
        "LIFEBOAT_NATS_URL": nats_url,
        "LIFEBOAT_CLUSTERS_FILE": str(clusters_file),
        "LIFEBOAT_PG_PASSWORD": pg_password,
        **(extra or {}),
    }


def _answers(url: str, timeout: float = 1) -> bool:
    """True when `url` answers 200 right now."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return bool(resp.status == 200)
    except (OSError, ValueError):  # HTTPError (any non-2xx) and URLError are OSErrors
        return False


class ServiceProcess(ManagedProcess):
    """`python -m lifeboat.<service>` as a managed child, not yet started.

    The child's environment is `env`, then LIFEBOAT_HTTP_PORT (`port`, a free one if not
    given) and LIFEBOAT_INSTANCE_ID (`instance`, when given), then `extra`, which wins.
    Output goes to `log_file` or `on_line`; `stop()` ends the whole session by PID.
    """

    def __init__(
        self,
        service: str,
        env: Mapping[str, str],
        *,
        port: int | None = None,
        instance: str | None = None,
        extra: Mapping[str, str] | None = None,
        name: str | None = None,
        log_file: Path | None = None,
        on_line: LineSink | None = None,
    ) -> None:
        full = {**env, "LIFEBOAT_HTTP_PORT": str(port if port is not None else free_port())}
        if instance is not None:
            full["LIFEBOAT_INSTANCE_ID"] = instance
        full.update(extra or {})
        super().__init__(
            name or instance or service,
            module_argv(f"lifeboat.{service}"),
            env=full,
            log_file=log_file,
            on_line=on_line,
        )
        self.service = service
        self.port = int(full["LIFEBOAT_HTTP_PORT"])

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def output(self) -> str:
        """What it wrote so far (with `log_file`; empty otherwise)."""
        if self.log_file is None or not self.log_file.exists():
            return ""
        return self.log_file.read_text(errors="replace")

    def wait_ready(self, timeout: float = 30, path: str = "/health/ready") -> None:
        """Until `path` answers 200; RuntimeError with its output if the process exits."""

        def ready() -> bool:
            if not self.alive():
                raise RuntimeError(
                    f"{self.name} exited with {self.exit_code()}:\n{self.output()[-4000:]}"
                )
            return _answers(f"{self.url}{path}")

        wait_until(ready, timeout=timeout, what=f"{self.name} to answer {path}")


def launch(
    service: str,
    env: Mapping[str, str],
    *,
    port: int | None = None,
    instance: str | None = None,
    extra: Mapping[str, str] | None = None,
    name: str | None = None,
    log_file: Path | None = None,
    on_line: LineSink | None = None,
) -> ServiceProcess:
    """Start `service` (see ServiceProcess) and return it running."""
    proc = ServiceProcess(
        service,
        env,
        port=port,
        instance=instance,
        extra=extra,
        name=name,
        log_file=log_file,
        on_line=on_line,
    )
    proc.start()
    return proc

"""docker-compose.yml's process topology, started from the file itself, with no Docker engine.

Every service in the file becomes a test host (`netns`) of its own name, where its command
runs with the environment the file gives it, in the file's dependency order (`depends_on`
and its conditions, each judged by the service's own healthcheck command). Names resolve as
on compose's network: `ip netns exec` mounts /etc/netns/<namespace>/hosts over /etc/hosts,
and that file names every service. What differs from a container, and why:

- paths: a container's paths become this machine's through the service's volumes (named
  volumes are directories under `base`, bind mounts the repository's files; the image's
  WORKDIR, /app, is the repository), in its command, its environment and the files mounted
  into it (copied, with their paths mapped);
- programs: the Lifeboat image's `python` is this workspace's, with the image's ENV; the
  `nats` image's server is nats-server from PyPI; MinIO, which is not here, is stood in for
  by SeaweedFS's S3 with the same credentials, and `mc mb` by creating the buckets it names;
- the user: processes run as root; PostgreSQL's tools then run as the PostgreSQL account,
  as they do under the image's `postgres` user, and the named volumes of an image run as
  `postgres` are that account's, as the image makes them.

`compose_stack` starts it and tears every host down on the way out, even on failure.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lifeboat.devstack import netns
from lifeboat.devstack.procs import ManagedProcess, find_binary
from lifeboat.devstack.servers import S3Credentials, S3Ports, SeaweedS3
from lifeboat.objstore.client import ensure_buckets
from lifeboat.pg.osuser import OsUser

ROOT = Path(__file__).resolve().parents[5]
WORKDIR = "/app"  # the Lifeboat image's WORKDIR: the repository
_VARIABLE = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*))?\}")


def interpolate(value: Any, env: Mapping[str, str]) -> Any:
    """Compose's `${NAME}`, `${NAME:-default}` and `$$` in every string of `value`."""
    if isinstance(value, str):

        def one(m: re.Match[str]) -> str:
            if m.group(0) == "$$":
                return "$"
            found = env.get(m.group(1))
            return found if found else (m.group(2) or "")

        return _VARIABLE.sub(one, value)
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    return value


def load(path: Path, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The file's services, anchors and merge keys resolved, variables interpolated."""
    data = yaml.safe_load(path.read_text())
    services: dict[str, Any] = interpolate(data["services"], os.environ if env is None else env)
    return services


def start_order(services: Mapping[str, Any]) -> list[str]:
    """Each service after everything it depends on; raises on a cycle."""
    order: list[str] = []
    visiting: set[str] = set()

    def visit(name: str) -> None:
        if name in order:
            return
        if name in visiting:
            raise ValueError(f"depends_on cycle through {name}")
        visiting.add(name)
        for dep in services[name].get("depends_on", {}):
            visit(dep)
        visiting.discard(name)
        order.append(name)

    for name in services:
        visit(name)
    return order


@dataclass
class Paths:
    """A container's paths as this machine's: (container path, local path), longest first."""

    mounts: list[tuple[str, Path]]

    def map(self, text: str) -> str:
        for inside, outside in self.mounts:
            text = re.sub(rf"(?<![\w.-]){re.escape(inside)}(?=/|\b|$)", str(outside), text)
        return text


@dataclass
class Service:
    name: str
    spec: dict[str, Any]
    host: netns.TestHost
    paths: Paths
    process: ManagedProcess | None = None
    s3: SeaweedS3 | None = None
    completed: bool = False
    log_file: Path = field(default_factory=Path)

    @property
    def image(self) -> str:
        return str(self.spec.get("image", "lifeboat"))

    @property
    def built(self) -> bool:
        return "build" in self.spec

    def running(self) -> bool:
        return (self.process is not None and self.process.alive()) or self.s3 is not None


class ComposeStack:
    """The services of `compose_file` on test hosts under `base`; see `compose_stack`."""

    def __init__(self, base: Path, compose_file: Path, net: netns.TestNetwork) -> None:
        self.base = base
        self.file = compose_file
        self.net = net
        self.specs = load(compose_file)
        self.order = start_order(self.specs)
        self.pg_user = OsUser.for_postgres()
        self.services = {
            name: Service(name, spec, net.hosts[name], self._paths(name, spec))
            for name, spec in self.specs.items()
        }
        for svc in self.services.values():
            svc.log_file = base / f"{svc.name}.log"
        self._write_hosts()

    # --- what each container sees --------------------------------------------------------

    def _named_volumes(self, spec: Mapping[str, Any]) -> list[tuple[str, Path]]:
        """A service's named volumes: where inside, and their directory under `base`."""
        return [
            (v.split(":")[1], self.base / "volumes" / v.split(":")[0])
            for v in spec.get("volumes", [])
            if not v.startswith(".")
        ]

    def _paths(self, name: str, spec: Mapping[str, Any]) -> Paths:
        mounts: list[tuple[str, Path]] = []
        for volume in spec.get("volumes", []):
            source, inside = volume.split(":")[:2]
            if source.startswith("."):
                local = self._mounted_file(name, (self.file.parent / source).resolve(), inside)
                mounts.append((inside, local))
        for inside, local in self._named_volumes(spec):
            local.mkdir(parents=True, exist_ok=True)
            local.chmod(0o755)
            if spec.get("build", {}).get("args", {}).get("RUN_AS") == "postgres":
                self.pg_user.own(local)
            mounts.append((inside, local))
        if "build" in spec:
            mounts.append((WORKDIR, ROOT))
        mounts.sort(key=lambda m: -len(m[0]))
        return Paths(mounts)

    def _mounted_file(self, service: str, source: Path, inside: str) -> Path:
        """A file mounted into a container, copied with the container's paths mapped (its
        named volumes): a configuration file names where the container keeps its data."""
        if source.is_dir():
            return source
        copy = self.base / "files" / service / Path(inside).name
        copy.parent.mkdir(parents=True, exist_ok=True)
        named = self._named_volumes(self.specs[service])
        copy.write_text(Paths(sorted(named, key=lambda m: -len(m[0]))).map(source.read_text()))
        return copy

    def _write_hosts(self) -> None:
        lines = ["127.0.0.1 localhost"]
        lines += [f"{s.host.address} {name}" for name, s in self.services.items()]
        for svc in self.services.values():
            etc = Path("/etc/netns") / svc.host.netns
            etc.mkdir(parents=True, exist_ok=True)
            (etc / "hosts").write_text("\n".join(lines) + "\n")

    def address(self, name: str) -> str:
        return self.services[name].host.address

    def environment(self, svc: Service) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("LIFEBOAT_")}
        if svc.built:  # the image's ENV
            venv = Path(sys.executable).parent
            env |= {
                "PATH": f"{venv}:{env.get('PATH', '/usr/bin:/bin')}",
                "PYTHONUNBUFFERED": "1",
                "LIFEBOAT_HTTP_HOST": "0.0.0.0",
            }
        given = svc.spec.get("environment", {})
        if isinstance(given, list):
            given = dict(item.split("=", 1) for item in given)
        env |= {k: svc.paths.map(str(v)) for k, v in given.items()}
        return env

    def argv(self, svc: Service) -> list[str]:
        command = svc.spec.get("command", [])
        words = shlex.split(command) if isinstance(command, str) else list(command)
        words = [svc.paths.map(w) for w in words]
        if svc.built:
            return [sys.executable if w == "python" else w for w in words[:1]] + words[1:]
        if svc.image.startswith("nats:"):
            return [find_binary("nats-server"), *words]
        raise ValueError(f"{svc.name}: no stand-in for image {svc.image}")

    # --- starting, stopping, health --------------------------------------------------------

    def start(self, name: str) -> None:
        """`docker compose start <name>`: its command again, on its volumes."""
        svc = self.services[name]
        if svc.image.startswith("minio/minio"):
            env = svc.spec.get("environment", {})
            password = env.get("MINIO_ROOT_PASSWORD") or (
                Path(svc.paths.map(f"/run/secrets/{env['MINIO_ROOT_PASSWORD_FILE']}"))
                .read_text()
                .strip()
            )
            svc.s3 = SeaweedS3(
                self.base / "volumes" / "s3",
                S3Ports(s3=9000),
                S3Credentials(env["MINIO_ROOT_USER"], password),
                log_file=svc.log_file,
                host=svc.host.address,
            )
            (self.base / "volumes" / "s3").mkdir(parents=True, exist_ok=True)
            svc.s3.process.argv = svc.host.command(svc.s3.process.argv)
            svc.s3.start()
            return
        if svc.image.startswith("minio/mc"):
            svc.completed = self._make_buckets(svc)
            return
        # Its own working directory, as a container has its own filesystem (the backup
        # service's work_dir is relative to it).
        cwd = self.base / "fs" / name
        cwd.mkdir(parents=True, exist_ok=True)
        svc.process = ManagedProcess(
            name,
            svc.host.command(self.argv(svc)),
            env=self.environment(svc),
            cwd=cwd,
            log_file=svc.log_file,
        )
        svc.process.start()

    def _make_buckets(self, svc: Service) -> bool:
        script = " ".join(svc.spec.get("command", []))
        buckets = re.findall(r"local/([\w.-]+)", script.split("mc mb", 1)[-1])
        s3 = next(s.s3 for s in self.services.values() if s.s3 is not None)
        ensure_buckets(s3.client(), tuple(buckets))
        return True

    def healthy(self, name: str) -> bool:
        svc = self.services[name]
        if svc.s3 is not None:
            return True  # SeaweedS3.start waited for its S3 to answer
        check = svc.spec.get("healthcheck")
        if check is None or not svc.running():
            return svc.running()
        test = list(check["test"])
        kind, words = test[0], test[1:]
        if kind == "CMD-SHELL":
            words = ["sh", "-c", " ".join(words)]
        words = [svc.paths.map(w) for w in words]
        if words[0] == "python":
            words[0] = sys.executable
        if words[0] == "wget" and shutil.which("wget") is None:
            url = words[-1]  # busybox's wget in the nats image: fetch the URL, as it would
            words = [
                sys.executable,
                "-c",
                f"import urllib.request as u; u.urlopen({url!r}, timeout=2)",
            ]
        result = subprocess.run(
            svc.host.command(words),
            capture_output=True,
            env=self.environment(svc),
            timeout=10,
            check=False,
        )
        return result.returncode == 0

    def _ready_for(self, name: str, started: set[str]) -> bool:
        for dep, rule in self.specs[name].get("depends_on", {}).items():
            condition = (rule or {}).get("condition", "service_started")
            if dep not in started:
                return False
            if condition == "service_healthy" and not self.healthy(dep):
                return False
            if condition == "service_completed_successfully" and not self._completed(
                self.services[dep]
            ):
                return False
        return True

    def up(self, timeout: float = 240) -> None:
        """`docker compose up -d --wait`: each service once its conditions hold, then until
        every service with a healthcheck is healthy."""
        started: set[str] = set()
        deadline = time.monotonic() + timeout
        while True:
            for name in self.order:
                if name not in started and self._ready_for(name, started):
                    self.start(name)
                    started.add(name)
            waiting = [n for n in self.order if n not in started]
            unhealthy = [n for n in started if not self._done(n)]
            if not waiting and not unhealthy:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"compose up: not started {waiting}, not healthy {unhealthy}\n" + self.tail()
                )
            time.sleep(1)

    def _done(self, name: str) -> bool:
        svc = self.services[name]
        if self._runs_once(name):
            return self._completed(svc)
        return self.healthy(name)

    def _runs_once(self, name: str) -> bool:
        """A service others wait for to complete (an init), not to be healthy."""
        return any(
            (rule or {}).get("condition") == "service_completed_successfully"
            for spec in self.specs.values()
            for dep, rule in spec.get("depends_on", {}).items()
            if dep == name
        )

    @staticmethod
    def _completed(svc: Service) -> bool:
        if svc.process is not None and svc.process.exit_code() not in (None, 0):
            raise RuntimeError(f"{svc.name} exited with {svc.process.exit_code()}")
        return svc.completed or (svc.process is not None and svc.process.exit_code() == 0)

    def kill(self, name: str) -> None:
        """`docker kill`: SIGKILL to everything in the container (its host), at once."""
        for pid in self.services[name].host.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        process = self.services[name].process
        if process is not None:
            process.stop(timeout=5)

    def stop(self, name: str, timeout: float = 40) -> None:
        """`docker stop`: SIGTERM to the main process, SIGKILL after `timeout`."""
        svc = self.services[name]
        if svc.s3 is not None:
            svc.s3.stop()
            svc.s3 = None
        elif svc.process is not None:
            svc.process.stop(timeout=timeout)
        self.kill(name)

    def tail(self, chars: int = 2000) -> str:
        return "\n".join(
            f"--- {svc.name}\n" + svc.log_file.read_text(errors="replace")[-chars:]
            for svc in self.services.values()
            if svc.log_file.exists()
        )

    def close(self) -> None:
        for name in reversed(self.order):
            with contextlib.suppress(Exception):
                self.stop(name, timeout=20)
        for svc in self.services.values():
            shutil.rmtree(Path("/etc/netns") / svc.host.netns, ignore_errors=True)


@contextlib.contextmanager
def compose_stack(
    base: Path,
    compose_file: Path = ROOT / "docker-compose.yml",
    *,
    extra_hosts: tuple[str, ...] = (),
) -> Iterator[ComposeStack]:
    """The file's services up on test hosts (plus `extra_hosts`, e.g. a client), stopped
    and torn down on the way out."""
    base.mkdir(parents=True, exist_ok=True)
    base.chmod(0o755)  # PostgreSQL runs as another user and must reach its directories
    names = tuple(load(compose_file)) + extra_hosts
    with netns.network_of(*names) as net:
        stack = ComposeStack(base, compose_file, net)
        try:
            stack.up()
            yield stack
        finally:
            stack.close()

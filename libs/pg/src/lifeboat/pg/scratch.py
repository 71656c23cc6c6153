"""Throwaway PostgreSQL instances on this host: for test restores and restores into a new
data directory. Each has its own data directory, port and private socket directory."""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from lifeboat.pg.datadir import DataDir
from lifeboat.pg.osuser import OsUser
from lifeboat.pg.tools import ToolError

SUPERUSER = "postgres"


@dataclass(frozen=True)
class Instance:
    home: Path  # holds data/, run/ and postgres.log
    port: int
    user: OsUser
    bindir: Path
    superuser: str = SUPERUSER

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def socket_dir(self) -> Path:
        """home/run, unless that is too long for a socket path (107 bytes with the file
        name): then a private directory under the system's temporary directory."""
        run = self.home / "run"
        if len(str(run)) <= 80:
            return run
        digest = hashlib.sha256(str(self.home).encode()).hexdigest()[:12]
        return Path(tempfile.gettempdir()) / f"lifeboat-{digest}"

    @property
    def log_file(self) -> Path:
        return self.home / "postgres.log"

    @property
    def data(self) -> DataDir:
        return DataDir(self.data_dir, self.user, self.bindir)

    def prepare(self) -> None:
        """The directories, owned by the PostgreSQL user, with an empty data directory."""
        self.home.mkdir(parents=True, exist_ok=True)
        self.home.chmod(0o755)
        for path in (self.data_dir, self.socket_dir):
            path.mkdir(mode=0o700, exist_ok=True)
        self.user.own(self.home, self.socket_dir)

    def initdb(self) -> None:
        self.prepare()
        self.data.pg(
            "initdb",
            "-D",
            str(self.data_dir),
            "-U",
            self.superuser,
            "--auth-local=trust",
            "--auth-host=reject",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
            timeout=180,
        )
        with (self.data_dir / "postgresql.auto.conf").open("a") as conf:
            conf.write(
                f"port = {self.port}\nunix_socket_directories = '{self.socket_dir}'\n"
                "listen_addresses = ''\nfsync = off\n"
            )

    def conninfo(self, dbname: str = "postgres") -> str:
        return f"host={self.socket_dir} port={self.port} user={self.superuser} dbname={dbname}"

    def start(self, timeout: float = 600) -> None:
        """Start and wait until it accepts connections (recovery may take a while)."""
        self.data.start(self.log_file, timeout)

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def wait_promoted(self, timeout: float = 600) -> None:
        """Until recovery is over (PostgreSQL removes recovery.signal when it promotes) and
        the instance accepts connections, or the postmaster died; needs no credentials."""
        deadline = time.monotonic() + timeout
        signal = self.data_dir / "recovery.signal"
        while time.monotonic() < deadline:
            if not self.data.running():
                raise ToolError("postgres", 1, f"stopped during recovery:\n{self.log_tail()}")
            if not signal.exists() and self.accepting():
                return
            time.sleep(0.1)
        raise ToolError("postgres", None, f"still recovering after {timeout:g}s")

    def accepting(self) -> bool:
        try:
            self.data.pg(
                "pg_isready", "-q", "-h", str(self.socket_dir), "-p", str(self.port), timeout=5
            )
        except ToolError:
            return False
        return True

    def stop(self) -> None:
        self.data.stop("immediate", timeout=30)

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.home, ignore_errors=True)
        shutil.rmtree(self.socket_dir, ignore_errors=True)

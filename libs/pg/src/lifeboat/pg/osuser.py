"""The account PostgreSQL's processes and tools run as: PostgreSQL refuses to run as root."""

from __future__ import annotations

import os
import pwd
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class OsUser:
    name: str
    uid: int
    gid: int

    @classmethod
    def current(cls) -> OsUser:
        return cls(pwd.getpwuid(os.getuid()).pw_name, os.getuid(), os.getgid())

    @classmethod
    def for_postgres(cls, preferred: str | None = None) -> OsUser:
        """Us, unless we are root: then `preferred`, `postgres` or `nobody`, the first found."""
        if os.getuid() != 0:
            return cls.current()
        for name in (preferred, "postgres", "nobody"):
            if not name:
                continue
            try:
                entry = pwd.getpwnam(name)
            except KeyError:
                continue
            return cls(entry.pw_name, entry.pw_uid, entry.pw_gid)
        raise RuntimeError("running as root and found no unprivileged user to run PostgreSQL")

    @property
    def is_current(self) -> bool:
        return self.uid == os.getuid()

    @property
    def switch_uid(self) -> int | None:
        """For Popen(user=...): None when the child runs as us."""
        return None if self.is_current else self.uid

    @property
    def switch_gid(self) -> int | None:
        return None if self.is_current else self.gid

    @property
    def switch_groups(self) -> list[int] | None:
        return None if self.is_current else []

    def own(self, *paths: Path) -> None:
        """Give `paths` (recursively) to this user; a no-op when it is us."""
        if self.is_current:
            return
        for path in paths:
            os.chown(path, self.uid, self.gid)
            for root, dirs, files in os.walk(path):
                for name in dirs + files:
                    os.chown(os.path.join(root, name), self.uid, self.gid, follow_symlinks=False)

    def can_reach(self, path: Path) -> Path | None:
        """The first directory on the way to `path` this user may not enter, or None.

        Root's home is mode 0700 on Debian: a stack cloned there cannot hold data directories
        that the postgres user must open.
        """
        if self.is_current:
            return None
        for parent in reversed(path.resolve().parents):
            try:
                st = parent.stat()
            except OSError:
                return parent
            if st.st_uid == self.uid:
                allowed = st.st_mode & 0o100
            elif st.st_gid == self.gid:
                allowed = st.st_mode & 0o010
            else:
                allowed = st.st_mode & 0o001
            if not allowed:
                return parent
        return None

"""Keeps secrets out of logs, reprs and error messages."""

from __future__ import annotations

import re

MASK = "***"

_URI_PASSWORD = re.compile(
    r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:/@\s]*):(?P<pw>[^@\s]*)@", re.I
)
_KEYWORD_PASSWORD = re.compile(
    r"(?P<key>\b(?:password|passwd|secret|secret_access_key|token)\s*=\s*)"
    r"(?P<value>'(?:[^'\\]|\\.)*'|[^\s'\",;&]+)",
    re.I,
)


def redact(text: str) -> str:
    """Mask passwords in URIs (`scheme://user:pw@`) and `password=...` key/value pairs."""
    text = _URI_PASSWORD.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", text)
    return _KEYWORD_PASSWORD.sub(lambda m: f"{m['key']}{MASK}", text)


class Dsn:
    """A libpq connection string that never shows its password unless asked to."""

    __slots__ = ("_conninfo",)

    def __init__(self, conninfo: str) -> None:
        self._conninfo = conninfo

    def reveal(self) -> str:
        return self._conninfo

    def __str__(self) -> str:
        return redact(self._conninfo)

    def __repr__(self) -> str:
        return f"Dsn({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Dsn) and other._conninfo == self._conninfo

    def __hash__(self) -> int:
        return hash(self._conninfo)

"""synchronous_standby_names as Lifeboat writes it (`ANY 1 ("a", "b")`) and reads it back."""

from __future__ import annotations

import re

_NAMES = re.compile(r'"((?:[^"]|"")*)"|([A-Za-z0-9_]+)')


def format_sync_names(standbys: tuple[str, ...]) -> str:
    """Any one of `standbys` acknowledges a commit; empty: commits wait for none."""
    if not standbys:
        return ""
    quoted = ", ".join('"' + s.replace('"', '""') + '"' for s in standbys)
    return f"ANY 1 ({quoted})"


_NAMES = re.compile(r'"((?:[^"]|"")*)"|([A-Za-z0-9_]+)')


def parse_sync_names(value: str | None) -> tuple[str, ...]:
    """The standby names in synchronous_standby_names ('ANY 1 ("a", b)'), sorted."""
    if not value or "(" not in value:
        return ()
    inner = value[value.index("(") + 1 : value.rindex(")")]
    return tuple(sorted(m[0].replace('""', '"') or m[1] for m in _NAMES.findall(inner)))

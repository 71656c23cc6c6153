"""Secrets come from the environment or from files (Docker/Kubernetes secrets), never from code."""

from __future__ import annotations

from pathlib import Path

from pydantic import SecretStr


class MissingSecretError(ValueError):
    pass


def resolve_secret(name: str, value: SecretStr | None, file: Path | None) -> SecretStr | None:
    """The secret given directly wins; otherwise it is read from `file` (trailing newline cut)."""
    if value is not None:
        return value
    if file is None:
        return None
    try:
        return SecretStr(file.read_text(encoding="utf-8").rstrip("\r\n"))
    except OSError as exc:
        raise MissingSecretError(f"cannot read {name} from {file}: {exc.strerror}") from None

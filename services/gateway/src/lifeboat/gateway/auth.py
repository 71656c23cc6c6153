"""Bearer tokens with roles: who may read, who may operate, who may administer.

Tokens are configured hashed, one `name:role:hash` per line (`LIFEBOAT_TOKENS` or the file
`LIFEBOAT_TOKENS_FILE`): `sha256:<hex>` (a random token needs no slow hash) or
`scrypt:<salt hex>:<hex>` (n=2**14, r=8, p=1) for tokens a person chose. `LIFEBOAT_ADMIN_TOKEN_FILE`
names a file with one plain token, created when missing, granted `admin` as `local-admin`:
what the local stack and the CLI share.

Every mutating endpoint needs `operate` or more; reads need `read` unless they are open
(by default only when the gateway listens on loopback). Who asked is the token's name, never
a field of the body. A token is never logged: only its name is.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, Request

from lifeboat.common.secrets import resolve_secret
from lifeboat.gateway.problems import Problem
from lifeboat.gateway.settings import GatewaySettings

log = logging.getLogger(__name__)

SCRYPT = {"n": 2**14, "r": 8, "p": 1}


class Role(IntEnum):
    READ = 1
    OPERATE = 2
    ADMIN = 3

    @classmethod
    def parse(cls, text: str) -> Role:
        try:
            return cls[text.strip().upper()]
        except KeyError:
            raise ValueError(f"unknown role {text!r} (read, operate or admin)") from None


@dataclass(frozen=True)
class Principal:
    name: str
    role: Role
    authenticated: bool = True


ANONYMOUS = Principal("anonymous", Role.READ, authenticated=False)


class TokenFileError(ValueError):
    pass


def hash_token(token: str, *, scheme: str = "sha256") -> str:
    """The `hash` part of a token line for `token`."""
    if scheme == "sha256":
        return "sha256:" + hashlib.sha256(token.encode()).hexdigest()
    if scheme == "scrypt":
        salt = secrets.token_bytes(16)
        digest = hashlib.scrypt(token.encode(), salt=salt, **SCRYPT)
        return f"scrypt:{salt.hex()}:{digest.hex()}"
    raise ValueError(f"unknown hash scheme {scheme!r} (sha256 or scrypt)")


@dataclass(frozen=True)
class _Entry:
    name: str
    role: Role
    scheme: str
    salt: bytes
    digest: bytes

    def matches(self, token: str, sha: bytes) -> bool:
        if self.scheme == "sha256":
            return hmac.compare_digest(sha, self.digest)
        got = hashlib.scrypt(token.encode(), salt=self.salt, **SCRYPT)
        return hmac.compare_digest(got, self.digest)


def parse_line(line: str, where: str) -> _Entry:
    try:
        name, role, scheme, rest = line.split(":", 3)
    except ValueError:
        raise TokenFileError(f"{where}: expected name:role:hash") from None
    try:
        if scheme == "sha256":
            return _Entry(name.strip(), Role.parse(role), "sha256", b"", bytes.fromhex(rest))
        if scheme == "scrypt":
            salt, digest = rest.split(":", 1)
            entry = _Entry(
                name.strip(), Role.parse(role), "scrypt", bytes.fromhex(salt), bytes.fromhex(digest)
            )
            return entry
    except ValueError as exc:
        raise TokenFileError(f"{where}: {exc}") from None
    raise TokenFileError(f"{where}: unknown hash scheme {scheme!r} (sha256 or scrypt)")


def ensure_token_file(path: Path) -> str:
    """The plain token in `path`, which is created (0600, random) when missing."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:  # created once, whole, by whoever comes first (several workers may race)
        fd = os.open(path.with_suffix(".new"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        fd = -1
    if fd >= 0 and not path.exists():
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32))
        os.replace(path.with_suffix(".new"), path)
    elif fd >= 0:
        os.close(fd)
        path.with_suffix(".new").unlink(missing_ok=True)
    for _ in range(50):
        if path.exists():
            return path.read_text(encoding="utf-8").strip()
        time.sleep(0.1)
    raise TokenFileError(f"{path}: not created")


class TokenBook:
    """The configured tokens; `check(token)` is the principal or None."""

    def __init__(self, entries: list[_Entry]) -> None:
        self._entries = entries
        # sha256 of a token already matched (scrypt is slow on purpose): the principal.
        self._seen: dict[bytes, Principal] = {}

    def __len__(self) -> int:
        return len(self._entries)

    @classmethod
    def from_settings(cls, settings: GatewaySettings) -> TokenBook:
        secret = resolve_secret("LIFEBOAT_TOKENS", settings.tokens, settings.tokens_file)
        entries = []
        text = secret.get_secret_value() if secret is not None else ""
        for number, raw in enumerate(text.splitlines(), 1):
            line = raw.strip()
            if line and not line.startswith("#"):
                entries.append(parse_line(line, f"LIFEBOAT_TOKENS line {number}"))
        if settings.admin_token_file is not None:
            token = ensure_token_file(settings.admin_token_file)
            digest = hashlib.sha256(token.encode()).digest()
            entries.append(_Entry("local-admin", Role.ADMIN, "sha256", b"", digest))
        return cls(entries)

    def check(self, token: str) -> Principal | None:
        sha = hashlib.sha256(token.encode()).digest()
        known = self._seen.get(sha)
        if known is not None:
            return known
        found = None
        for entry in self._entries:  # every entry, so the time says nothing about which
            if entry.matches(token, sha) and found is None:
                found = Principal(entry.name, entry.role)
        if found is not None and len(self._seen) < 10000:
            self._seen[sha] = found
        return found


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Problem(
            401,
            "Unauthorized",
            "the Authorization header must be `Bearer <token>`",
            headers={"WWW-Authenticate": 'Bearer realm="lifeboat"'},
        )
    return token.strip()


def require(role: Role) -> Callable[[Request], Coroutine[Any, Any, Principal]]:
    """A dependency: the caller's principal, or 401 (no or unknown token) / 403 (too weak)."""

    async def dependency(request: Request) -> Principal:
        return authorize(request, role)

    return dependency


def authorize(request: Request, role: Role) -> Principal:
    """The caller's principal for an endpoint that needs `role`, or a 401/403 problem."""
    book: TokenBook = request.app.state.tokens
    settings: GatewaySettings = request.app.state.gateway.settings
    token = _bearer(request)
    if token is None:
        if role is Role.READ and not settings.reads_need_token():
            return ANONYMOUS
        raise Problem(
            401,
            "Unauthorized",
            f"this endpoint needs a bearer token with role {role.name.lower()} or more",
            headers={"WWW-Authenticate": 'Bearer realm="lifeboat"'},
        )
    principal = book.check(token)
    if principal is None:
        log.warning("refused an unknown token from %s", request.client)
        raise Problem(
            401,
            "Unauthorized",
            "the bearer token is not known",
            headers={"WWW-Authenticate": 'Bearer realm="lifeboat", error="invalid_token"'},
        )
    if principal.role < role:
        raise Problem(
            403,
            "Forbidden",
            f"{principal.name} has role {principal.role.name.lower()}; "
            f"this needs {role.name.lower()} or more",
        )
    return principal


Reader = Annotated[Principal, Depends(require(Role.READ))]
Operator = Annotated[Principal, Depends(require(Role.OPERATE))]

from __future__ import annotations

import getpass
import ipaddress
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, SecretStr
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from lifeboat.common.settings import S3Settings, ServiceSettings


class Webhook(BaseModel):
    """One destination of the notifier (`LIFEBOAT_WEBHOOKS`, a JSON list of these)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    url: str
    format: Literal["json", "slack"] = "json"
    events: tuple[str, ...] = (
        "failover.completed",
        "failover.failed",
        "switchover.completed",
        "node.down",
        "node.fenced",
        "node.lag",
        "backup.failed",
        "maintenance.paused",
        "maintenance.resumed",
    )
    """Event types delivered (`node.health` too, to alert on `lag_seconds`)."""
    min_lag_level: Literal["warning", "critical"] = "warning"
    """`node.lag` below this level is not delivered (a lag back to `ok` never is)."""
    lag_seconds: PositiveFloat | None = None
    """When set, a `node.health` with at least this replication lag is delivered as a lag
    alert (its type must be in `events`)."""
    cooldown_seconds: float = Field(default=300, ge=0)
    """The same alert (type, cluster, node, level) at most once per this many seconds."""
    timeout_seconds: PositiveFloat = 5.0
    attempts: PositiveInt = 5
    """Deliveries tried (with exponential backoff) before the alert is dropped."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class GatewaySettings(ServiceSettings, S3Settings):
    model_config = SettingsConfigDict(
        env_prefix="LIFEBOAT_", extra="ignore", frozen=True, use_attribute_docstrings=True
    )

    http_port: int = Field(default=8000, ge=0, le=65535)
    """Port of the REST API."""
    service_urls: dict[str, str] = Field(default_factory=dict)
    """The other services' health endpoints that GET /health aggregates, as JSON, e.g.
    `{"monitor": "http://127.0.0.1:8101"}`."""
    service_timeout_seconds: float = Field(default=1.5, gt=0)
    """Deadline of one service health check."""

    tokens: SecretStr | None = None
    """API tokens, one `name:role:hash` per line (role `read`, `operate` or `admin`; hash
    `sha256:<hex>` or `scrypt:<salt hex>:<hex>`; `lifeboat token hash` makes one). Or
    `LIFEBOAT_TOKENS_FILE`."""
    tokens_file: Path | None = None
    """A file of such lines."""
    admin_token_file: Path | None = None
    """A file holding one plain token that is granted `admin` as `local-admin`; created
    (mode 0600, random) when missing. The local stack uses it; the CLI reads it."""
    reads_open: bool | None = None
    """Whether GET endpoints answer without a token; by default only when `http_host` is a
    loopback address. Health and HAProxy role checks are always open."""
    heartbeat_buffer: PositiveInt = 20000
    """Heartbeats (node.health, wal.status, ...) kept in memory for live readers and resumes."""
    workers: PositiveInt = 1
    """uvicorn worker processes. Each keeps a whole projection of its own (every worker
    reads KV and both streams), so any worker answers any request, operations included."""
    webhooks: tuple[Webhook, ...] = ()
    """Where the notifier delivers alerts, as JSON: `[{"url": ..., "format": "slack"}]`."""

    def reads_need_token(self) -> bool:
        if self.reads_open is not None:
            return not self.reads_open
        return not is_loopback(self.http_host)


def _login_name() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no login name and no passwd entry (some containers)
        return "cli"


DEFAULT_TOKEN_FILE = Path(".lifeboat/secrets/lifeboat_token")
DEFAULT_CLI_CONFIG = Path("~/.config/lifeboat/cli.toml")


class CliSettings(BaseSettings):
    """What the `lifeboat` command line reads from the environment or from its config file
    (`LIFEBOAT_CLI_CONFIG`, `~/.config/lifeboat/cli.toml` by default: the same keys in
    lower case, e.g. `gateway_url = "..."`); options on the command line win."""

    model_config = SettingsConfigDict(
        env_prefix="LIFEBOAT_", extra="ignore", frozen=True, use_attribute_docstrings=True
    )

    gateway_url: str = "http://127.0.0.1:8000"
    """Base URL of the gateway's REST API."""
    requested_by: str = Field(default_factory=_login_name, min_length=1, max_length=200)
    """Who you are, shown locally; the gateway records the token's name on events."""
    token: SecretStr | None = None
    """API token (or `LIFEBOAT_TOKEN_FILE`, else `.lifeboat/secrets/lifeboat_token` or
    `$LIFEBOAT_STACK_DIR/secrets/lifeboat_token` when there is one)."""
    token_file: Path | None = None
    """A file holding the API token."""
    stack_dir: Path = Path(".lifeboat")
    """The local stack's directory, where its token is."""
    cli_config: Path = DEFAULT_CLI_CONFIG
    """The CLI's config file (TOML)."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        config = env_settings().get("cli_config", DEFAULT_CLI_CONFIG)
        path = Path(str(config)).expanduser()
        toml = TomlConfigSettingsSource(settings_cls, toml_file=path if path.is_file() else None)
        return (init_settings, env_settings, toml)

    def resolve_token(self) -> str | None:
        """The token: given, from its file, or the local stack's; None when there is none."""
        if self.token is not None:
            return self.token.get_secret_value()
        candidates = [self.token_file] if self.token_file is not None else []
        candidates += [self.stack_dir / "secrets" / "lifeboat_token", DEFAULT_TOKEN_FILE]
        for path in candidates:
            assert path is not None
            try:
                text = path.expanduser().read_text(encoding="utf-8").strip()
            except OSError:
                if path is self.token_file:
                    raise
                continue
            if text:
                return text
        return None

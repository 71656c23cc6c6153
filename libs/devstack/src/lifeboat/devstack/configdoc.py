"""docs/configuration.md, made from the settings models (`make docs`; a test checks it).

Every setting is an environment variable `LIFEBOAT_<FIELD>`; the description is the field's
docstring, so the reference cannot drift from the code.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from enum import Enum
from pathlib import Path

from pydantic import BaseModel, SecretStr
from pydantic_core import PydanticUndefined
from pydantic_settings import BaseSettings

from lifeboat.agent.settings import AgentSettings
from lifeboat.backup.settings import BackupSettings
from lifeboat.common.settings import S3Settings, ServiceSettings
from lifeboat.devstack.settings import StackSettings
from lifeboat.failover.settings import FailoverSettings
from lifeboat.filesync.settings import FilesyncSettings
from lifeboat.gateway.settings import GatewaySettings
from lifeboat.monitor.settings import MonitorSettings

# (title, model, whether the sections above already list its common settings, intro)
SECTIONS: tuple[tuple[str, type[BaseSettings], bool, str], ...] = (
    (
        "Every service",
        ServiceSettings,
        False,
        "Monitor, failover, backup, filesync, gateway, node agent.",
    ),
    ("S3", S3Settings, False, "Read by backup, filesync and the gateway."),
    ("Monitor", MonitorSettings, True, "`python -m lifeboat.monitor`."),
    ("Failover", FailoverSettings, True, "`python -m lifeboat.failover`."),
    ("Backup", BackupSettings, True, "`python -m lifeboat.backup`."),
    ("Filesync", FilesyncSettings, True, "`python -m lifeboat.filesync`."),
    ("Gateway", GatewaySettings, True, "`python -m lifeboat.gateway`."),
    ("Node agent", AgentSettings, True, "`python -m lifeboat.agent`, one beside each node."),
    ("Local stack (`make up`)", StackSettings, False, "`python -m lifeboat.devstack up`."),
)


def _default(model: type[BaseModel], name: str) -> str:
    field = model.model_fields[name]
    if field.default_factory is not None:
        return "(computed)"
    value = field.default
    if value is PydanticUndefined or value is None:
        return "-"
    if isinstance(value, SecretStr):
        return "(secret)"
    if isinstance(value, Enum):
        value = value.value
    if isinstance(value, Path):
        value = str(value)
    return f"`{json.dumps(value) if not isinstance(value, str) else value}`"


def _rows(model: type[BaseSettings], shared: bool) -> Iterator[str]:
    """The model's settings; for a service, only those the shared sections do not list
    (or whose default it changes, like its port)."""
    prefix = str(model.model_config.get("env_prefix", ""))
    for name, field in model.model_fields.items():
        base = next((b for b in (ServiceSettings, S3Settings) if name in b.model_fields), None)
        if shared and base is not None and _default(model, name) == _default(base, name):
            continue
        description = " ".join((field.description or "").split())
        yield f"| `{prefix}{name.upper()}` | {_default(model, name)} | {description} |"


def render() -> str:
    out = [
        "# Configuration",
        "",
        "Generated from the settings models by `make docs`; a test fails when it is stale.",
        "Every setting is an environment variable. A secret can also be given as a file: set",
        "the variable with `_FILE` appended to its name to the file's path. Secrets are never",
        "logged nor returned by the API, and DSNs are redacted.",
        "",
    ]
    for title, model, shared, intro in SECTIONS:
        out += [
            f"## {title}",
            "",
            intro,
            "",
            "| variable | default | meaning |",
            "| --- | --- | --- |",
        ]
        out += list(_rows(model, shared))
        out.append("")
    return "\n".join(out)


def main() -> None:
    print(render(), end="")


if __name__ == "__main__":
    main()

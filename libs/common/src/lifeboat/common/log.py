"""Structured logging: every line names the service and instance, and secrets are masked."""

from __future__ import annotations

import json
import logging
import sys
from typing import Literal

from lifeboat.common.redact import redact

_RESERVED = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


class _ContextFilter(logging.Filter):
    def __init__(self, service: str, instance: str) -> None:
        super().__init__()
        self.service = service
        self.instance = instance

    def filter(self, record: logging.LogRecord) -> bool:
        record.service = self.service
        record.instance = self.instance
        return True


class RedactingFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname,
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        data.update({k: v for k, v in record.__dict__.items() if k not in _RESERVED})
        if record.exc_info:
            data["exc"] = redact(self.formatException(record.exc_info))
        return json.dumps(data, default=lambda v: redact(str(v)))


def configure_logging(
    service: str,
    instance: str,
    *,
    level: str = "INFO",
    fmt: Literal["text", "json"] = "text",
) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_ContextFilter(service, instance))
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            RedactingFormatter(
                "%(asctime)s %(levelname)-7s %(service)s[%(instance)s] %(name)s: %(message)s"
            )
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Libraries that log their own handlers must go through ours, so they carry the context.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "faststream", "faststream.access"):
        lib = logging.getLogger(name)
        lib.handlers[:] = []
        lib.propagate = True
    for chatty in (
        "uvicorn.access",
        "faststream.access",
        "httpx",
        "httpcore",
        "botocore",
        "urllib3",
    ):
        logging.getLogger(chatty).setLevel(logging.WARNING)

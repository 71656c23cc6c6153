"""Events read off NATS become the contract's models, chosen by their `type` field."""

from __future__ import annotations

import json

from pydantic import ValidationError

from lifeboat.common.events import EVENT_TYPES, Envelope


class UndecodableEventError(ValueError):
    """A message that is not one of the contract's events."""


def decode_event(data: bytes) -> Envelope:
    """The event model `data` is (picked from `EVENT_TYPES` by its `type`), validated."""
    try:
        raw = json.loads(data)
    except ValueError as exc:
        raise UndecodableEventError(f"not JSON: {exc}") from None
    kind = raw.get("type") if isinstance(raw, dict) else None
    model = EVENT_TYPES.get(kind) if isinstance(kind, str) else None
    if model is None:
        raise UndecodableEventError(f"no event type {kind!r}")
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise UndecodableEventError(f"invalid {kind}: {exc.error_count()} error(s)") from exc

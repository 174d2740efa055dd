"""Server-sent events as the OpenAI and Anthropic APIs write them."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from sidecar.adapters.base import dumps


def data_event(payload: Any) -> bytes:
    """``data: {...}`` (OpenAI's streams carry no event names)."""
    return b"data: " + dumps(payload) + b"\n\n"


def named_event(name: str, payload: Any) -> bytes:
    """``event: NAME`` then ``data: {...}`` (the Responses and Anthropic Messages streams)."""
    return b"event: " + name.encode() + b"\n" + data_event(payload)


def new_id(prefix: str) -> str:
    return prefix + uuid.uuid4().hex[:24]


def now() -> int:
    return int(time.time())


def loads_event(event_data: bytes) -> Any:
    """An event's JSON payload, or None when it is not JSON."""
    try:
        return json.loads(event_data)
    except (UnicodeDecodeError, ValueError):
        return None


def identity(event_data: bytes, key: str | None = None) -> tuple[str | None, str | None]:
    """The upstream's id and model in one streaming event (under ``key`` when the API nests them),
    kept in the events that replace an unsafe answer."""
    payload = loads_event(event_data)
    if key is not None and isinstance(payload, dict):
        payload = payload.get(key)
    if not isinstance(payload, dict):
        return None, None
    rid, model = payload.get("id"), payload.get("model")
    return (rid if isinstance(rid, str) else None, model if isinstance(model, str) else None)

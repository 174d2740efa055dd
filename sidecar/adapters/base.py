"""The adapter interface the proxy talks to."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from sidecar.conversation import ChatRequest
from steerguard.errors import InvalidInput


@dataclass
class Reply:
    """A reply the sidecar makes itself (block, steer, replaced answer)."""

    body: bytes
    content_type: str = "application/json"
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ReplyMeta:
    """What the reply templates may mention about the decision."""

    verdict: str
    unsafe: bool
    category: str
    score: float
    action: str

    def as_values(self, reply: str) -> Mapping[str, Any]:
        return {
            "reply": reply,
            "verdict": self.verdict,
            "unsafe": self.unsafe,
            "category": self.category,
            "score": round(self.score, 6),
            "action": self.action,
        }


class StreamFormatter(Protocol):
    """Turns generated text into the upstream's streaming events."""

    def start(self) -> bytes: ...

    def delta(self, text: str) -> bytes: ...

    def finish(self, reason: str, prompt_tokens: int, completion_tokens: int) -> bytes: ...

    def error(self, reason: str) -> bytes: ...


class Adapter(Protocol):
    """Parse requests and shape replies in one chatbot API."""

    name: str
    streaming_content_type: str

    def parse(self, body: bytes) -> ChatRequest:
        """Understand a request body; raise InvalidInput with a safe reason."""
        ...

    def reply(
        self,
        request: ChatRequest,
        text: str,
        meta: ReplyMeta,
        *,
        finish_reason: str = "stop",
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
    ) -> Reply:
        """A complete reply carrying ``text`` in the upstream's shape."""
        ...

    def stream_formatter(
        self, request: ChatRequest, completion_id: str | None = None, model: str | None = None
    ) -> StreamFormatter:
        """Events for a streamed reply (only when ``request.stream``), keeping an upstream's id/model."""
        ...

    def answer_text(self, document: Any) -> str | None:
        """The upstream's answer in a parsed response body, or None when absent."""
        ...

    def replace_answer(self, document: Any, text: str) -> bytes:
        """The upstream's response body with its answer replaced by ``text``."""
        ...

    def stream_answer_delta(self, event_data: bytes) -> str | None:
        """Text carried by one upstream streaming event; None when it carries none."""
        ...


def load_json_object(body: bytes) -> Any:
    """Parse a request body, mapping every failure to a safe InvalidInput."""
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, ValueError):
        raise InvalidInput("request body is not valid JSON") from None
    if not isinstance(document, dict):
        raise InvalidInput("request body must be a JSON object")
    return document


def dumps(document: Any) -> bytes:
    """Compact UTF-8 JSON, as most chatbot APIs write it."""
    return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode("utf-8")

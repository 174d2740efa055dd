"""Anthropic's Messages API, ``POST /v1/messages``, and its server-sent event shapes.

The ``system`` field (text or text blocks), every message's content blocks
(text, tool results, tool-use input) and tool descriptions are judged. Replies
the sidecar makes itself are ``message`` objects, streamed as ``message_start``,
``content_block_start``/``content_block_delta``/``content_block_stop``,
``message_delta`` and ``message_stop``; an answer replaced after it was judged
unsafe ends with ``stop_reason: "refusal"``, the API's own word for it.
"""

from __future__ import annotations

from typing import Any

from sidecar.adapters.base import FINISHED, Ending, Reply, ReplyMeta, dumps, load_json_object
from sidecar.adapters.fields import (
    answer_texts,
    chat_request,
    message_text,
    part_text,
    strings,
    text_beside,
    text_of,
)
from sidecar.adapters.sse import identity, loads_event, named_event, new_id
from sidecar.conversation import ChatRequest, Message
from steerguard.errors import InvalidInput

# What the proxy's finish reasons are called here.
_STOP = {"stop": "end_turn", "length": "max_tokens", "content_filter": "refusal"}
_HANDLED = frozenset({"messages", "system"})


def _messages(document: dict[str, Any], unjudged: list[str]) -> list[Message]:
    raw = document.get("messages")
    if not isinstance(raw, list) or not raw:
        raise InvalidInput("'messages' must be a non-empty list")
    out: list[Message] = []
    for message in raw:
        if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
            raise InvalidInput("each message must be an object with role user or assistant")
        out.append(Message(str(message["role"]), message_text(message, unjudged)))
    system = document.get("system")
    framing = [Message("system", text_of(system, unjudged))] if system else []
    framing.extend(text_beside(document, _HANDLED, unjudged))  # tools, schemas, fields unknown here
    if not any(m.role == "user" and m.content.strip() for m in out):
        raise InvalidInput("no user message with text to check")
    return framing + out


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"input_tokens": prompt_tokens, "output_tokens": completion_tokens}


def _message(
    mid: str, model: str, text: str | None, stop: str | None, usage: dict[str, int]
) -> dict[str, Any]:
    content = [{"type": "text", "text": text}] if text is not None else []
    return {
        "id": mid,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop,
        "stop_sequence": None,
        "usage": usage,
    }


class AnthropicStreamFormatter:
    """The Messages API's named events for one text block."""

    def __init__(self, request: ChatRequest, message_id: str | None = None, model: str | None = None):
        self._id = message_id or new_id("msg_")
        self._model = model or request.model or "steerguard"

    def _open_block(self) -> bytes:
        start = {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
        return named_event("content_block_start", start)

    def start(self) -> bytes:
        begin = {
            "type": "message_start",
            "message": _message(self._id, self._model, None, None, _usage(0, 0)),
        }
        return named_event("message_start", begin) + self._open_block()

    def delta(self, text: str) -> bytes:
        event = {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}}
        return named_event("content_block_delta", event)

    def finish(self, reason: str, prompt_tokens: int = 0, completion_tokens: int = 0) -> bytes:
        stop = {"type": "content_block_stop", "index": 0}
        delta = {
            "type": "message_delta",
            "delta": {"stop_reason": _STOP.get(reason, "end_turn"), "stop_sequence": None},
            "usage": {"output_tokens": completion_tokens},
        }
        return (
            named_event("content_block_stop", stop)
            + named_event("message_delta", delta)
            + named_event("message_stop", {"type": "message_stop"})
        )

    def error(self, reason: str) -> bytes:
        return named_event("error", {"type": "error", "error": {"type": "api_error", "message": reason}})


class AnthropicAdapter:
    """``POST /v1/messages``, streaming or not."""

    name = "anthropic"
    streaming_content_type = "text/event-stream"

    def parse(self, body: bytes) -> ChatRequest:
        document = load_json_object(body)
        unjudged: list[str] = []
        return chat_request(document, _messages(document, unjudged), unjudged=unjudged)

    def reply(
        self,
        request: ChatRequest,
        text: str,
        meta: ReplyMeta,
        ending: Ending = FINISHED,
    ) -> Reply:
        stop = _STOP.get(ending.finish_reason, "end_turn")
        payload = _message(
            new_id("msg_"),
            request.model or "steerguard",
            text,
            stop,
            _usage(ending.prompt_tokens, ending.completion_tokens),
        )
        return Reply(body=dumps(payload))

    def stream_formatter(
        self, request: ChatRequest, completion_id: str | None = None, model: str | None = None
    ) -> AnthropicStreamFormatter:
        return AnthropicStreamFormatter(request, completion_id, model)

    def answer_text(self, document: Any) -> str | None:
        blocks = document.get("content") if isinstance(document, dict) else None
        return answer_texts(blocks, lambda block: "\n".join(part_text(block, [])))  # thinking, tool use

    def replace_answer(self, document: Any, text: str) -> bytes:
        document["content"] = [{"type": "text", "text": text}]
        document["stop_reason"] = "refusal"
        return dumps(document)

    def stream_answer_delta(self, event_data: bytes) -> dict[int, str]:
        payload = loads_event(event_data)
        if not isinstance(payload, dict):
            return {}
        # Text, thinking and tool-input deltas, and any text a block starts with (one answer).
        text = "".join(strings([payload.get("content_block"), payload.get("delta")]))
        return {0: text} if text else {}

    @staticmethod
    def stream_identity(event_data: bytes) -> tuple[str | None, str | None]:
        """The upstream's id and model, to keep them in replacement events."""
        return identity(event_data, "message")

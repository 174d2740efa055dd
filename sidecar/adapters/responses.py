"""OpenAI's ``POST /v1/responses``: ``input`` as a string or a list of items, plus ``instructions``.

Every item is judged: messages of any role, their text parts of any type,
function-call arguments and outputs. Replies the sidecar makes itself use the
``response`` object and the named server-sent events of that API
(``response.created``, ``response.output_text.delta``, ``response.completed``).
"""

from __future__ import annotations

from typing import Any

from sidecar.adapters.base import FINISHED, Ending, Reply, ReplyMeta, dumps, load_json_object
from sidecar.adapters.fields import answer_texts, chat_request, message_text, part_text, strings, text_beside
from sidecar.adapters.sse import identity, loads_event, named_event, new_id, now
from sidecar.conversation import ChatRequest, Message
from steerguard.errors import InvalidInput

_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
_HANDLED = frozenset({"input", "instructions"})
# Streamed deltas that are not words: audio samples.
_NOT_TEXT_DELTAS = frozenset({"response.audio.delta"})


def _item(item: Any, unjudged: list[str]) -> Message:
    """One input item: a message, or a function call or its output (user-side text)."""
    if isinstance(item, str):
        return Message("user", item)
    if not isinstance(item, dict):
        raise InvalidInput("each input item must be an object or text")
    if "role" in item:
        role = _ROLES.get(str(item["role"]))
        if role is None:
            raise InvalidInput("unknown input item role")
        return Message(role, message_text(item, unjudged))
    # A tool call or its output (text, or parts that may hold an image or a file), read as a part.
    return Message("user", "\n".join(t for t in part_text(item, unjudged) if t))


def _messages(document: dict[str, Any], unjudged: list[str]) -> list[Message]:
    raw = document.get("input")
    items = [raw] if isinstance(raw, str) else raw
    if not isinstance(items, list) or not items:
        raise InvalidInput("'input' must be text or a non-empty list of items")
    messages = [m for m in (_item(i, unjudged) for i in items) if m.content.strip()]
    framing = [Message("system", t) for t in strings(document.get("instructions"))]
    # A reusable prompt's variables, the tools' descriptions, a schema: text the model reads too.
    framing.extend(text_beside(document, _HANDLED, unjudged))
    if document.get("previous_response_id") or document.get("conversation"):
        unjudged.append("stored_conversation")  # earlier turns kept upstream: not visible here
    if not any(m.role == "user" for m in messages):
        raise InvalidInput("no user input with text to check")
    return framing + messages


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    """The Responses API's token counts, alike in a whole reply and in a stream's last event."""
    total = prompt_tokens + completion_tokens
    return {"input_tokens": prompt_tokens, "output_tokens": completion_tokens, "total_tokens": total}


def _response(rid: str, model: str, status: str, text: str | None) -> dict[str, Any]:
    output: list[dict[str, Any]] = []
    if text is not None:
        content = [{"type": "output_text", "text": text, "annotations": []}]
        item = {"type": "message", "id": "msg_" + rid[5:], "status": "completed", "role": "assistant"}
        output.append({**item, "content": content})
    return {
        "id": rid,
        "object": "response",
        "created_at": now(),
        "status": status,
        "model": model,
        "output": output,
    }


class ResponsesStreamFormatter:
    """``response.created``, ``response.output_text.delta`` events, then ``response.completed``."""

    def __init__(self, request: ChatRequest, response_id: str | None = None, model: str | None = None):
        self._id = response_id or new_id("resp_")
        self._model = model or request.model or "steerguard"
        self._text: list[str] = []

    def start(self) -> bytes:
        created = _response(self._id, self._model, "in_progress", None)
        return named_event("response.created", {"type": "response.created", "response": created})

    def delta(self, text: str) -> bytes:
        self._text.append(text)
        event = {"type": "response.output_text.delta", "item_id": "msg_" + self._id[5:]}
        return named_event(event["type"], {**event, "output_index": 0, "content_index": 0, "delta": text})

    def finish(self, reason: str, prompt_tokens: int = 0, completion_tokens: int = 0) -> bytes:
        status = "incomplete" if reason in ("length", "content_filter") else "completed"
        done = _response(self._id, self._model, status, "".join(self._text))
        done["usage"] = _usage(prompt_tokens, completion_tokens)
        name = "response.completed" if status == "completed" else "response.incomplete"
        return named_event(name, {"type": name, "response": done})

    def error(self, reason: str) -> bytes:
        return named_event("error", {"type": "error", "code": "server_error", "message": reason})


class ResponsesAdapter:
    """``POST /v1/responses``, streaming or not."""

    name = "responses"
    streaming_content_type = "text/event-stream"

    def parse(self, body: bytes) -> ChatRequest:
        document = load_json_object(body)
        unjudged: list[str] = []
        messages = _messages(document, unjudged)
        return chat_request(document, messages, max_tokens_key="max_output_tokens", unjudged=unjudged)

    def reply(
        self,
        request: ChatRequest,
        text: str,
        meta: ReplyMeta,
        ending: Ending = FINISHED,
    ) -> Reply:
        payload = _response(new_id("resp_"), request.model or "steerguard", "completed", text)
        payload["usage"] = _usage(ending.prompt_tokens, ending.completion_tokens)
        return Reply(body=dumps(payload))

    def stream_formatter(
        self, request: ChatRequest, completion_id: str | None = None, model: str | None = None
    ) -> ResponsesStreamFormatter:
        return ResponsesStreamFormatter(request, completion_id, model)

    def answer_text(self, document: Any) -> str | None:
        output = document.get("output") if isinstance(document, dict) else None
        return answer_texts(output, lambda item: "\n".join(strings(item)))  # reasoning, calls too

    def replace_answer(self, document: Any, text: str) -> bytes:
        document["output"] = _response("resp_x", "", "completed", text)["output"]
        document["status"] = "incomplete"
        document["incomplete_details"] = {"reason": "content_filter"}
        return dumps(document)

    def stream_answer_delta(self, event_data: bytes) -> dict[int, str]:
        payload = loads_event(event_data)
        if not isinstance(payload, dict) or not str(payload.get("type")).endswith(".delta"):
            return {}
        if payload["type"] in _NOT_TEXT_DELTAS:
            return {}
        delta = payload.get("delta")  # output text, reasoning, refusals, tool-call arguments (one answer)
        return {0: delta} if isinstance(delta, str) and delta else {}

    @staticmethod
    def stream_identity(event_data: bytes) -> tuple[str | None, str | None]:
        """The upstream's id and model, to keep them in replacement events."""
        return identity(event_data, "response")

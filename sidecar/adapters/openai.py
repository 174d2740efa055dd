"""OpenAI-style ``POST /v1/chat/completions``, the API most legacy chatbots copy.

Replies the sidecar makes itself (refusals, steered answers) use the exact
response and server-sent-event shapes of that API, so an unchanged client
cannot tell them from the upstream's own answers.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from sidecar.adapters.base import FINISHED, Ending, Reply, ReplyMeta, dumps, load_json_object, token_usage
from sidecar.adapters.fields import (
    answer_texts,
    chat_request,
    message_text,
    strings,
    text_beside,
    texts_by_choice,
)
from sidecar.adapters.sse import identity, loads_event
from sidecar.conversation import ChatRequest, Message
from steerguard.errors import InvalidInput

# Every role is judged. Tool and function results are text the model will read and act on
# (an injected instruction arrives this way), so they are judged as user-side turns.
_ROLE_MAP = {
    "system": "system",
    "developer": "system",
    "user": "user",
    "assistant": "assistant",
    "tool": "user",
    "function": "user",
}
_HANDLED = frozenset({"messages"})


def _message(raw: Any, unjudged: list[str]) -> Message:
    """One message with all its text: content, the author's ``name``, tool calls, reasoning."""
    if not isinstance(raw, dict) or not isinstance(raw.get("role"), str):
        raise InvalidInput("each message must be an object with a 'role'")
    role = _ROLE_MAP.get(raw["role"])
    if role is None:
        raise InvalidInput("unknown message role")
    return Message(role, message_text(raw, unjudged))


def _choice_text(choice: dict[str, Any]) -> str:
    message = choice.get("message")
    return message_text(message, []) if isinstance(message, dict) else ""


def new_completion_id() -> str:
    """An id in OpenAI's format."""
    return "chatcmpl-" + uuid.uuid4().hex[:24]


class OpenAIStreamFormatter:
    """``chat.completion.chunk`` events followed by ``data: [DONE]``."""

    def __init__(self, request: ChatRequest, completion_id: str | None = None, model: str | None = None):
        self._id = completion_id or new_completion_id()
        self._model = model or request.model or "steerguard"
        self._created = int(time.time())
        self._include_usage = request.include_usage

    def _event(self, payload: dict[str, Any]) -> bytes:
        return b"data: " + dumps(payload) + b"\n\n"

    def _chunk(self, delta: dict[str, Any], finish_reason: str | None) -> bytes:
        return self._event(
            {
                "id": self._id,
                "object": "chat.completion.chunk",
                "created": self._created,
                "model": self._model,
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
            }
        )

    def start(self) -> bytes:
        return self._chunk({"role": "assistant", "content": ""}, None)

    def delta(self, text: str) -> bytes:
        return self._chunk({"content": text}, None)

    def finish(self, reason: str, prompt_tokens: int = 0, completion_tokens: int = 0) -> bytes:
        out = self._chunk({}, reason)
        if self._include_usage:
            out += self._event(
                {
                    "id": self._id,
                    "object": "chat.completion.chunk",
                    "created": self._created,
                    "model": self._model,
                    "choices": [],
                    "usage": token_usage(prompt_tokens, completion_tokens),
                }
            )
        return out + b"data: [DONE]\n\n"

    def error(self, reason: str) -> bytes:
        return self._event({"error": {"message": reason, "type": "server_error"}}) + b"data: [DONE]\n\n"


class OpenAIAdapter:
    """Chat completions, streaming or not."""

    name = "openai"
    streaming_content_type = "text/event-stream"

    def parse(self, body: bytes) -> ChatRequest:
        document = load_json_object(body)
        raw_messages = document.get("messages")
        if not isinstance(raw_messages, list) or not raw_messages:
            raise InvalidInput("'messages' must be a non-empty list")
        unjudged: list[str] = []
        messages = [_message(raw, unjudged) for raw in raw_messages]
        # Text beside the messages comes first, after any leading system message: it frames them.
        lead = 1 if messages and messages[0].role == "system" else 0
        messages[lead:lead] = text_beside(document, _HANDLED, unjudged)
        if not any(m.role == "user" and m.content.strip() for m in messages):
            raise InvalidInput("no user message with text to check")
        options = document.get("stream_options") or {}
        if not isinstance(options, dict):
            raise InvalidInput("'stream_options' must be an object")
        newer = document.get("max_completion_tokens") is not None
        return chat_request(
            document,
            messages,
            max_tokens_key="max_completion_tokens" if newer else "max_tokens",
            unjudged=unjudged,
            include_usage=bool(options.get("include_usage", False)),
        )

    def reply(
        self,
        request: ChatRequest,
        text: str,
        meta: ReplyMeta,
        ending: Ending = FINISHED,
    ) -> Reply:
        payload = {
            "id": new_completion_id(),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": request.model or "steerguard",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text, "refusal": None},
                    "logprobs": None,
                    "finish_reason": ending.finish_reason,
                }
            ],
            "usage": token_usage(ending.prompt_tokens, ending.completion_tokens),
        }
        return Reply(body=dumps(payload))

    def stream_formatter(
        self, request: ChatRequest, completion_id: str | None = None, model: str | None = None
    ) -> OpenAIStreamFormatter:
        return OpenAIStreamFormatter(request, completion_id, model)

    def answer_text(self, document: Any) -> str | None:
        choices = document.get("choices") if isinstance(document, dict) else None
        return answer_texts(choices, _choice_text)

    def replace_answer(self, document: Any, text: str) -> bytes:
        for choice in document.get("choices", []):
            if isinstance(choice, dict) and isinstance(choice.get("message"), dict):
                # Reasoning, tool calls and audio go with the text: none of it reaches the client.
                choice["message"] = {"role": "assistant", "content": text, "refusal": None}
                choice["finish_reason"] = "content_filter"
                choice["logprobs"] = None  # they spell out the withheld answer token by token
        return dumps(document)

    def stream_answer_delta(self, event_data: bytes) -> dict[int, str]:
        payload = loads_event(event_data)
        if not isinstance(payload, dict):
            return {}
        # Content, reasoning, tool-call arguments, per choice.
        return texts_by_choice(payload.get("choices"), lambda c: "".join(strings([c.get("delta")])))

    @staticmethod
    def stream_identity(event_data: bytes) -> tuple[str | None, str | None]:
        """The upstream's completion id and model, to keep them in replacement events."""
        return identity(event_data)

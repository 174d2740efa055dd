"""OpenAI's legacy ``POST /v1/completions``: a prompt string (or a list of them), no messages.

Every prompt in a list is judged, and so is a ``suffix``. Prompts given as
token ids cannot be read as text and are refused (400): the guard never
forwards what it cannot judge.
"""

from __future__ import annotations

from typing import Any

from sidecar.adapters.base import (
    FINISHED,
    Ending,
    Reply,
    ReplyMeta,
    dumps,
    joined_texts,
    load_json_object,
    token_usage,
)
from sidecar.adapters.fields import chat_request, text_beside, texts_by_choice
from sidecar.adapters.sse import data_event, identity, loads_event, new_id, now
from sidecar.conversation import ChatRequest, Message
from steerguard.errors import InvalidInput

_HANDLED = frozenset({"prompt", "suffix", "prompt_embeds"})


def _prompts(document: dict[str, Any]) -> list[str]:
    if document.get("prompt_embeds") is not None:
        raise InvalidInput("'prompt_embeds' cannot be judged: send the prompt as text")
    prompt = document.get("prompt")
    items: list[Any] = prompt if isinstance(prompt, list) else [prompt]
    if not items or not all(isinstance(p, str) for p in items):
        raise InvalidInput("'prompt' must be text or a list of texts (token-id prompts cannot be judged)")
    texts = [str(p) for p in items if str(p).strip()]
    if isinstance(document.get("suffix"), str) and document["suffix"].strip():
        texts.append(document["suffix"])
    if not texts:
        raise InvalidInput("no prompt text to check")
    return texts


class CompletionsStreamFormatter:
    """``text_completion`` chunks followed by ``data: [DONE]``."""

    def __init__(self, request: ChatRequest, completion_id: str | None = None, model: str | None = None):
        self._id = completion_id or new_id("cmpl-")
        self._model = model or request.model or "steerguard"
        self._created = now()

    def _chunk(self, text: str, finish_reason: str | None) -> bytes:
        choice = {"text": text, "index": 0, "logprobs": None, "finish_reason": finish_reason}
        payload = {
            "id": self._id,
            "object": "text_completion",
            "created": self._created,
            "model": self._model,
        }
        return data_event({**payload, "choices": [choice]})

    def start(self) -> bytes:
        return b""

    def delta(self, text: str) -> bytes:
        return self._chunk(text, None)

    def finish(self, reason: str, prompt_tokens: int = 0, completion_tokens: int = 0) -> bytes:
        return self._chunk("", reason) + b"data: [DONE]\n\n"

    def error(self, reason: str) -> bytes:
        return data_event({"error": {"message": reason, "type": "server_error"}}) + b"data: [DONE]\n\n"


class CompletionsAdapter:
    """``POST /v1/completions``, streaming or not."""

    name = "completions"
    streaming_content_type = "text/event-stream"

    def parse(self, body: bytes) -> ChatRequest:
        document = load_json_object(body)
        unjudged: list[str] = []
        messages = text_beside(document, _HANDLED, unjudged)  # a schema, fields unknown here
        messages += [Message("user", text) for text in _prompts(document)]
        return chat_request(document, messages, unjudged=unjudged)

    def reply(
        self,
        request: ChatRequest,
        text: str,
        meta: ReplyMeta,
        ending: Ending = FINISHED,
    ) -> Reply:
        payload = {
            "id": new_id("cmpl-"),
            "object": "text_completion",
            "created": now(),
            "model": request.model or "steerguard",
            "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": ending.finish_reason}],
            "usage": token_usage(ending.prompt_tokens, ending.completion_tokens),
        }
        return Reply(body=dumps(payload))

    def stream_formatter(
        self, request: ChatRequest, completion_id: str | None = None, model: str | None = None
    ) -> CompletionsStreamFormatter:
        return CompletionsStreamFormatter(request, completion_id, model)

    def answer_text(self, document: Any) -> str | None:
        return joined_texts(document.get("choices") if isinstance(document, dict) else None)

    def replace_answer(self, document: Any, text: str) -> bytes:
        for choice in document.get("choices", []):
            if isinstance(choice, dict):
                choice["text"] = text
                choice["finish_reason"] = "content_filter"
                choice["logprobs"] = None  # they spell out the withheld answer token by token
        return dumps(document)

    def stream_answer_delta(self, event_data: bytes) -> dict[int, str]:
        payload = loads_event(event_data)
        choices = payload.get("choices") if isinstance(payload, dict) else None
        return texts_by_choice(choices, lambda c: c["text"] if isinstance(c.get("text"), str) else "")

    @staticmethod
    def stream_identity(event_data: bytes) -> tuple[str | None, str | None]:
        """The upstream's id and model, to keep them in replacement events."""
        return identity(event_data)

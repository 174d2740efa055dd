"""The adapter interface the proxy talks to."""

from __future__ import annotations

import asyncio
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
class Ending:
    """How a reply the sidecar writes ended, and its token counts (zero where none were generated)."""

    finish_reason: str = "stop"
    prompt_tokens: int = 0
    completion_tokens: int = 0


FINISHED = Ending()  # a refusal or template answer: stopped, no tokens generated


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
        ending: Ending = FINISHED,
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

    def stream_answer_delta(self, event_data: bytes) -> dict[int, str]:
        """Text carried by one upstream streaming event, by the answer it belongs to (a choice's
        index; 0 where the API streams one answer); empty when it carries none."""
        ...


MAX_JSON_DEPTH = 64  # far deeper than any chat API nests; a deeper body is an attack on the parser


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """Object hook: a key given twice is ambiguous (we would judge one, an upstream may read the other)."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise InvalidInput(f"request body repeats the key {key[:40]!r}")
        out[key] = value
    return out


def _finite(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise InvalidInput("request body holds a number out of range")
    return value


def _no_constant(name: str) -> Any:
    raise InvalidInput(f"request body holds {name}, which JSON does not allow")


def _check_strings(document: Any) -> None:
    """Every string (keys too) is valid Unicode, and nothing nests deeper than :data:`MAX_JSON_DEPTH`."""
    stack: list[tuple[Any, int]] = [(document, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise InvalidInput(f"request body nests deeper than {MAX_JSON_DEPTH} levels")
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise InvalidInput("request body holds invalid Unicode (a lone surrogate)") from None
        elif isinstance(value, dict):
            stack.extend((k, depth) for k in value)
            stack.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, list):
            stack.extend((v, depth + 1) for v in value)


def load_json_object(body: bytes) -> Any:
    """Parse a request body strictly, mapping every failure to a safe InvalidInput (a 400).

    Stricter than ``json.loads``, because what the guard judges must be what
    the upstream reads: a repeated key, a lone surrogate, ``NaN``/``Infinity``
    or an out-of-range number may be read differently by another parser, and
    deep nesting is an attack on the parser itself.
    """
    try:
        document = json.loads(
            body, object_pairs_hook=_no_duplicates, parse_constant=_no_constant, parse_float=_finite
        )
    except RecursionError:
        raise InvalidInput(f"request body nests deeper than {MAX_JSON_DEPTH} levels") from None
    except (UnicodeDecodeError, ValueError):
        raise InvalidInput("request body is not valid JSON") from None
    if not isinstance(document, dict):
        raise InvalidInput("request body must be a JSON object")
    _check_strings(document)
    return document


# A body this large may carry files to decode and read (sidecar.adapters.files: a PDF's text
# takes a while): it is parsed in a worker thread, so the event loop serves other requests meanwhile.
PARSE_IN_THREAD_BYTES = 64 * 1024


async def parse_request(adapter: Adapter, body: bytes) -> ChatRequest:
    """``adapter.parse(body)``, off the event loop for a large body."""
    if len(body) < PARSE_IN_THREAD_BYTES:
        return adapter.parse(body)
    return await asyncio.to_thread(adapter.parse, body)


def dumps(document: Any) -> bytes:
    """Compact UTF-8 JSON, as most chatbot APIs write it."""
    return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def joined_texts(items: Any, key: str = "text") -> str | None:
    """The ``key`` strings of a JSON list of objects, joined by blank lines; None when there are none.

    How an answer with several parts (choices, content blocks) is read as one text to judge.
    """
    if not isinstance(items, list):
        return None
    texts = [i[key] for i in items if isinstance(i, dict) and isinstance(i.get(key), str)]
    return "\n\n".join(texts) if texts else None


def token_usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    """OpenAI's ``usage`` object (chat and text completions)."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def refusal(adapter: Adapter, chat: ChatRequest, text: str, meta: ReplyMeta) -> Reply:
    """The policy's refusal in the upstream's shape: server-sent events when the client asked to stream.

    One home for the sidecar's ``block`` answer and the ext_proc front end's ``ImmediateResponse``.
    """
    if chat.stream:
        fmt = adapter.stream_formatter(chat)
        body = fmt.start() + fmt.delta(text) + fmt.finish("stop", 0, 0)
        return Reply(body, "text/event-stream", 200, {"Cache-Control": "no-cache"})
    return adapter.reply(chat, text, meta)

"""Reading request fields the same way in every adapter: text wherever it is, numbers strictly.

A guard must judge every text an upstream may read, so text is collected from
content parts whatever their ``type`` (or none), from nested tool schemas and
call arguments, and from files sent inline (:mod:`sidecar.adapters.files`);
a part with no text (an image, audio) is reported as unjudged rather than
silently skipped.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sidecar.adapters.files import file_texts
from sidecar.conversation import ChatRequest, Message
from steerguard.errors import InvalidInput

# Parts whose content is not text (an image, audio, a file): they cannot be judged, and the
# request says so (ChatRequest.unjudged, the x-steerguard-unjudged header).
_TEXT_KEYS = ("text", "input_text", "output_text", "refusal", "transcript")


def part_text(part: Any, unjudged: list[str]) -> list[str]:
    """Every text a content part carries, whatever its ``type`` (or none)."""
    if isinstance(part, str):
        return [part]
    if not isinstance(part, dict):
        raise InvalidInput("message content parts must be objects")
    texts = [part[k] for k in _TEXT_KEYS if isinstance(part.get(k), str)]
    source = part.get("source")  # a document block whose source is plain text or parts (Anthropic)
    if isinstance(source, dict) and source.get("type") == "text" and isinstance(source.get("data"), str):
        texts.append(source["data"])
    if isinstance(source, dict) and source.get("type") == "content":
        texts.append(text_of(source.get("content"), unjudged))
    nested = part.get("content")  # a tool result's or a document's own content parts
    if isinstance(nested, (str, list)):
        texts.append(text_of(nested, unjudged))
    for key in ("input", "output", "arguments"):  # tool use input, function call output/arguments
        texts.extend(strings(part.get(key)))
    files, has_files = file_texts(part, unjudged)  # an unreadable file is reported there
    texts.extend(files)
    if not texts and not has_files:
        unjudged.append(str(part.get("type") or "untyped"))
    return texts


def text_of(content: Any, unjudged: list[str]) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(t for part in content for t in part_text(part, unjudged))
    raise InvalidInput("message content must be a string or a list of parts")


def strings(value: Any) -> list[str]:
    """Every string inside a JSON value (tool schemas, call arguments), depth-first."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in strings(v)]
    return []


def optional_number(document: dict[str, Any], key: str) -> float | None:
    value = document.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidInput(f"'{key}' must be a number")
    return float(value)


def optional_int(document: dict[str, Any], key: str) -> int | None:
    value = document.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(f"'{key}' must be an integer")
    return value


def stream_and_model(document: dict[str, Any]) -> tuple[bool, str | None]:
    """A request's ``stream`` flag (strictly a boolean) and its ``model`` name, if any."""
    stream = document.get("stream", False)
    if not isinstance(stream, bool):
        raise InvalidInput("'stream' must be true or false")
    model = document.get("model")
    return stream, model if isinstance(model, str) else None


def chat_request(
    document: dict[str, Any],
    messages: list[Message],
    *,
    max_tokens_key: str = "max_tokens",
    unjudged: Sequence[str] = (),
    include_usage: bool = False,
) -> ChatRequest:
    """The parsed request every adapter returns: messages plus the sampling fields the APIs share."""
    stream, model = stream_and_model(document)
    return ChatRequest(
        messages=messages,
        document=document,
        stream=stream,
        include_usage=include_usage,
        model=model,
        max_tokens=optional_int(document, max_tokens_key),
        temperature=optional_number(document, "temperature"),
        top_p=optional_number(document, "top_p"),
        seed=optional_int(document, "seed"),
        unjudged=tuple(unjudged),
    )

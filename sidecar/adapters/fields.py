"""Reading request fields the same way in every adapter: text wherever it is, numbers strictly.

A guard must judge every text an upstream may read, so text is collected from
every key of a message, a content part and the request itself, whatever its
name, but those listed as holding no words a model reads (:data:`NOT_TEXT`,
:data:`NOT_PROMPT`): a field the guard does not know (a new API field, a
server's extension such as vLLM's ``documents``) is judged, not relayed
unread. Schemas' property names count as text, and files sent inline are read
(:mod:`sidecar.adapters.files`); a part with no text (an image, audio) is
reported as unjudged rather than silently skipped.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from sidecar.adapters.files import file_texts
from sidecar.conversation import ChatRequest, Message
from steerguard.errors import InvalidInput

# Keys whose values are never text a model reads as words: identifiers, enumerations, media
# metadata, opaque or encrypted blobs, credentials (never sent on to the classifier), and
# settings. Every other string in a message, a content part or beside the messages is judged,
# so a field the guard does not know of is read rather than skipped.
NOT_TEXT = frozenset(
    {
        "type", "role", "id", "status", "index",
        "signature", "encrypted_content", "cache_control", "media_type", "mime_type", "detail",
        "url", "image_url", "file_url", "file_data", "data", "server_url", "headers",
        "authorization", "authorization_token", "verbosity", "stop_reason", "finish_reason",
        "stop_sequence", "search_context_size",
    }
)  # fmt: skip
# Top-level fields that set how an upstream runs, not what the model reads. Output constraints
# (guided_choice, guided_regex, guided_grammar, structured_outputs) are not here: they are judged,
# since a model made to pick among texts the user wrote ("To make X you need A" / "... B") answers them.
NOT_PROMPT = NOT_TEXT | {
    "model", "user", "metadata", "stop", "stop_sequences", "stream", "stream_options", "modalities",
    "audio", "service_tier", "reasoning_effort", "reasoning", "thinking", "prompt_cache_key",
    "safety_identifier", "store", "tool_choice", "function_call", "logit_bias", "prediction",
    "cache_salt", "guided_decoding_backend", "guided_whitespace_pattern", "bad_words", "kv_transfer_params",
    "vllm_xargs", "conversation", "include", "truncation", "container",
    "mcp_servers", "context_management", "logits_processors", "prompt_cache_retention",
}  # fmt: skip
# Maps whose keys are names a model reads (a schema's property names, a tool call's argument names).
_NAME_MAPS = frozenset({"properties", "patternProperties", "$defs", "definitions", "input"})
# A template sent with the request: its text is judged, but how it renders the messages cannot be.
_RENDERED = ("chat_template",)


def _opaque(key: str, value: Any, skip: frozenset[str]) -> bool:
    # "format" names an audio or date format, or holds a response schema (which is read); a key
    # ending in "_id" holds an identifier (a session's, a chat's), by every API's convention.
    return key in skip or key.endswith("_id") or (key == "format" and isinstance(value, str))


def part_text(part: Any, unjudged: list[str]) -> list[str]:
    """Every text a content part carries, whatever its ``type`` (or none) and its keys."""
    if isinstance(part, str):
        return [part]
    if not isinstance(part, dict):
        raise InvalidInput("message content parts must be objects")
    texts: list[str] = []
    for key, value in part.items():
        if key == "source":  # a document block whose source is plain text or parts (Anthropic)
            texts.extend(_source_text(value, unjudged))
        elif key in ("content", "output") and isinstance(value, (str, list)):  # a tool result's parts
            texts.append(text_of(value, unjudged))
        elif not _opaque(key, value, NOT_TEXT):
            texts.extend(strings(value, names=key in _NAME_MAPS))
    files, has_files = file_texts(part, unjudged)  # an unreadable file is reported there
    texts.extend(files)
    if not any(t.strip() for t in texts) and not has_files:
        unjudged.append(str(part.get("type") or "untyped"))
    return texts


def _source_text(source: Any, unjudged: list[str]) -> list[str]:
    """A source's text where it is inline; base64 files are read by :mod:`files`."""
    if not isinstance(source, dict):
        return strings(source)
    if source.get("type") == "text" and isinstance(source.get("data"), str):
        return [source["data"]]
    if source.get("type") == "content":
        return [text_of(source.get("content"), unjudged)]
    return []


def text_of(content: Any, unjudged: list[str]) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(t for part in content for t in part_text(part, unjudged))
    raise InvalidInput("message content must be a string or a list of parts")


def message_text(raw: dict[str, Any], unjudged: list[str]) -> str:
    """A message's content and every other text it carries: a ``name``, tool calls, reasoning."""
    texts = strings(raw.get("name")) + [text_of(raw.get("content"), unjudged)]
    for key, value in raw.items():
        if key not in ("name", "content") and not _opaque(key, value, NOT_TEXT):
            texts.extend(strings(value, names=key in _NAME_MAPS))
    return "\n".join(t for t in texts if t)


def texts_by_choice(choices: Any, read: Callable[[dict[str, Any]], str]) -> dict[int, str]:
    """A streamed event's text per answer: each choice's ``read`` text under its ``index`` (0 when
    it names none). Choices stream interleaved (``n`` > 1), and read as one text they would mix
    two answers word by word, which the probe cannot read, while the client reads each apart."""
    out: dict[int, str] = {}
    for choice in choices if isinstance(choices, list) else []:
        text = read(choice) if isinstance(choice, dict) else ""
        if text:
            index = choice.get("index")
            key = index if isinstance(index, int) and not isinstance(index, bool) else 0
            out[key] = out.get(key, "") + text
    return out


def answer_texts(items: Any, read: Callable[[Any], str]) -> str | None:
    """Every text in an answer's parts (choices, blocks, output items) joined; None when there is none.

    An answer is read as wholly as a request: reasoning, tool-call arguments and refusals
    reach the client as its text does. A part of a shape no API sends is left unread.
    """
    if not isinstance(items, list):
        return None
    texts = []
    for item in items:
        try:
            texts.append(read(item) if isinstance(item, dict) else "")
        except InvalidInput:
            continue
    joined = "\n\n".join(t for t in texts if t.strip())
    return joined or None


def text_beside(document: dict[str, Any], handled: frozenset[str], unjudged: list[str]) -> list[Message]:
    """Text outside the messages an upstream may read (a prompt, tools, documents, a schema), as turns."""
    extra: list[Message] = []
    for key, value in document.items():
        if key in handled or _opaque(key, value, NOT_PROMPT):
            continue
        texts = strings(value, names=key in _NAME_MAPS)
        if key in _RENDERED or (isinstance(value, dict) and any(k in _RENDERED for k in value)):
            unjudged.append("chat_template")  # vLLM takes one in chat_template_kwargs too
        if texts:
            extra.append(Message("user", "\n".join(texts)))
    return extra


def strings(value: Any, *, names: bool = False) -> list[str]:
    """Every string inside a JSON value, depth-first, but those of keys in :data:`NOT_TEXT`.

    ``names`` marks a map whose keys are names the model reads (a schema's properties).
    """
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        out: list[str] = []
        for key, item in value.items():
            if names:
                out.append(key)
            elif _opaque(key, item, NOT_TEXT):
                continue
            out.extend(strings(item, names=key in _NAME_MAPS and not names))
        return out
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

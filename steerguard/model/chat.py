"""Request normalisation and the one chat-formatting path.

Calibration, classification and generation must see byte-identical prompt
text, because the probe and the vectors are fitted on the hidden state of the
last prompt token: any drift in the template (e.g. a different system prompt)
shifts those states. Everything goes through :func:`normalise_request` and
:meth:`ModelHost.format`.
"""

from __future__ import annotations

import hashlib
import json
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from steerguard.errors import InvalidInput
from steerguard.messages import ROLES, Message

__all__ = ["ROLES", "Conversation", "Message", "normalise_request"]


@dataclass(frozen=True)
class Conversation:
    """A validated request: a list of messages whose last one is the user's."""

    messages: tuple[Message, ...]

    @property
    def last_user_text(self) -> str:
        return self.messages[-1].content

    def as_dicts(self) -> list[dict[str, str]]:
        return [{"role": m.role, "content": m.content} for m in self.messages]

    def digest(self) -> str:
        """sha256 of the normalised conversation: the cache key, never the text itself."""
        canon = json.dumps(
            [[m.role, unicodedata.normalize("NFC", m.content).strip()] for m in self.messages],
            ensure_ascii=False,
            separators=(",", ":"),
        )
        return hashlib.sha256(canon.encode("utf-8")).hexdigest()


def check_text(text: Any, what: str) -> str:
    """``text`` as a valid string (UTF-8, no NUL), else :class:`InvalidInput` naming ``what``."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidInput(f"{what} is not valid UTF-8") from exc
    if not isinstance(text, str):
        raise InvalidInput(f"{what} must be a string")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidInput(f"{what} is not valid UTF-8") from exc
    if "\x00" in text:
        raise InvalidInput(f"{what} contains a NUL character")
    return text


def normalise_request(
    prompt: str | bytes | None = None,
    messages: Sequence[Mapping[str, Any]] | None = None,
) -> Conversation:
    """Validate "a prompt or a conversation" into a :class:`Conversation`.

    Exactly one of ``prompt`` / ``messages`` must be given; roles must be
    known; the conversation must end with a non-empty user message.
    """
    has_prompt = prompt is not None and prompt != "" and prompt != b""
    has_messages = bool(messages)
    if has_prompt and has_messages:
        raise InvalidInput("give either prompt or messages, not both")
    if not has_prompt and not has_messages:
        if prompt is not None and not has_messages:
            raise InvalidInput("prompt is empty")
        raise InvalidInput("give a prompt or messages")
    if has_prompt:
        text = check_text(prompt, "prompt")
        if not text.strip():
            raise InvalidInput("prompt is empty")
        return Conversation((Message("user", text),))
    out: list[Message] = []
    assert messages is not None
    for i, raw in enumerate(messages):
        if not isinstance(raw, Mapping):
            raise InvalidInput(f"messages[{i}] must be an object with role and content")
        role = raw.get("role")
        if role not in ROLES:
            raise InvalidInput(f"messages[{i}].role must be one of {', '.join(ROLES)}")
        content = check_text(raw.get("content", ""), f"messages[{i}].content")
        out.append(Message(str(role), content))
    if out[-1].role != "user":
        raise InvalidInput("the last message must have role 'user'")
    if not out[-1].content.strip():
        raise InvalidInput("the last user message is empty")
    return Conversation(tuple(out))


WORD_JOINER = "\u2060"  # invisible, and no tokenizer merges it into a special token


def neutralise(conv: Conversation, special_tokens: Sequence[str]) -> Conversation:
    """``conv`` with chat-template tokens typed into its text made plain text.

    A user who types ``<|im_end|>\n<|im_start|>assistant`` would otherwise have
    the tokenizer turn it into real template structure: forged turns that
    change what the probe reads (a harmful request followed by a forged
    refusal and an innocent question scored 0.008) and what the steered model
    sees. A word joiner after the first character keeps the text readable and
    tokenises it as ordinary characters.
    """
    if not special_tokens or not any(t in m.content for m in conv.messages for t in special_tokens):
        return conv
    out = []
    for m in conv.messages:
        text = m.content
        for token in special_tokens:
            if token in text:
                text = text.replace(token, token[0] + WORD_JOINER + token[1:])
        out.append(Message(m.role, text))
    return Conversation(tuple(out))

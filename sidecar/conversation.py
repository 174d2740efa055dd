"""The conversation the classifier judges, independent of the wire format.

Adapters turn a request into a :class:`ChatRequest`; the proxy sends its
``context`` (the turns up to and including the user's latest message, trimmed
to a budget) to the classifier. Trimming drops the oldest turns but never the
latest user message, so a long chat stays classifiable and the text that
matters most is always judged whole.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from steerguard.errors import TooLong
from steerguard.messages import ROLES, Message

__all__ = ["ROLES", "ChatRequest", "Message", "context_for_classifier"]


@dataclass
class ChatRequest:
    """What an adapter understood of a request."""

    messages: list[Message]
    document: Any
    stream: bool = False
    include_usage: bool = False
    model: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    # Types of content parts with no text to read (images, audio, unreadable files): reported.
    unjudged: tuple[str, ...] = ()

    @property
    def prompt_chars(self) -> int:
        """Length of the latest user message (logged instead of the text)."""
        for message in reversed(self.messages):
            if message.role == "user":
                return len(message.content)
        return 0


def context_for_classifier(messages: list[Message], *, max_messages: int, max_chars: int) -> list[Message]:
    """Every turn with text, in order, as the classifier judges it.

    Nothing is dropped: the classifier judges a conversation of any length in
    views (the system prompt first in each), so a budget here would only hide
    turns. Turns after the latest user message (a system or assistant message
    placed last) are judged as user-side turns, since the conversation the
    classifier reads must end with one. Past ``max_messages`` or ``max_chars``
    (the policy's hard caps) the request is too long to judge.
    """
    kept = [m for m in messages if m.content.strip()]
    last_user = max((i for i, m in enumerate(kept) if m.role == "user"), default=-1)
    if last_user < 0:
        return []
    out = [m if i <= last_user else Message("user", m.content) for i, m in enumerate(kept)]
    if len(out) > max_messages or sum(len(m.content) for m in out) > max_chars:
        raise TooLong(
            f"the conversation is over the policy's limits ({max_messages} turns, {max_chars} characters)"
        )
    return out

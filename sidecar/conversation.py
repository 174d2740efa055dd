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

from steerguard.messages import ROLES, Message

__all__ = ["ROLES", "ChatRequest", "Message", "answer_conversation", "context_for_classifier"]


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

    @property
    def prompt_chars(self) -> int:
        """Length of the latest user message (logged instead of the text)."""
        for message in reversed(self.messages):
            if message.role == "user":
                return len(message.content)
        return 0


def context_for_classifier(messages: list[Message], *, max_messages: int, max_chars: int) -> list[Message]:
    """The turns up to the latest user message, oldest dropped past the budgets.

    System messages are kept ahead of other turns while they fit, because they
    change how the conversation reads.
    """
    last_user = max((i for i, m in enumerate(messages) if m.role == "user"), default=-1)
    if last_user < 0:
        return []
    head = messages[: last_user + 1]
    latest = head[-1]
    kept: list[Message] = [latest]
    budget = max_chars - len(latest.content)
    for message in reversed(head[:-1]):
        if len(kept) >= max_messages or len(message.content) > budget:
            break
        kept.append(message)
        budget -= len(message.content)
    kept.reverse()
    return kept


def answer_conversation(context: list[Message], answer: str) -> list[Message]:
    """What the classifier judges for a response check.

    The classifier's contract (``steerguard.model.chat.normalise_request``)
    requires the conversation to end with a user turn, because the probe reads
    the state after the last user message. So the answer is put in that last
    slot, after the conversation that led to it: the probe then judges the
    answer's content in context.
    """
    return [*context, Message("user", answer)]

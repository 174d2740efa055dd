"""One chat turn, shared by every layer: the model's formatting path and the sidecar's adapters.

Kept in a module of its own that imports nothing, so the light install (the
sidecar and the client, without torch) uses the same type as the model side.
"""

from __future__ import annotations

from dataclasses import dataclass

ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class Message:
    """One turn; ``role`` is one of :data:`ROLES`."""

    role: str
    content: str

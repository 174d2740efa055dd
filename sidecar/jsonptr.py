"""RFC 6901 JSON pointers: where a legacy bot keeps the user's text.

Written here (a dozen lines) instead of taking a dependency, because the
sidecar needs only lookup and replacement on already-parsed JSON.
"""

from __future__ import annotations

from typing import Any

_MISSING = object()


class PointerError(ValueError):
    """The pointer is malformed or names nothing in the document."""


def parse(pointer: str) -> list[str]:
    """Split ``/a/b~1c`` into ``["a", "b/c"]``; ``""`` is the whole document."""
    if pointer == "":
        return []
    if not pointer.startswith("/"):
        raise PointerError(f"JSON pointer must start with '/': {pointer!r}")
    return [part.replace("~1", "/").replace("~0", "~") for part in pointer[1:].split("/")]


def _step(node: Any, token: str) -> Any:
    if isinstance(node, dict):
        return node.get(token, _MISSING)
    if isinstance(node, list):
        if token == "-" or not token.isdigit() or (len(token) > 1 and token[0] == "0"):
            return _MISSING
        index = int(token)
        return node[index] if index < len(node) else _MISSING
    return _MISSING


def resolve(document: Any, pointer: str | list[str]) -> Any:
    """Return the value the pointer names; raise :class:`PointerError` when absent."""
    tokens = parse(pointer) if isinstance(pointer, str) else pointer
    node = document
    for token in tokens:
        node = _step(node, token)
        if node is _MISSING:
            raise PointerError("no value at the configured JSON pointer")
    return node


def replace(document: Any, pointer: str | list[str], value: Any) -> None:
    """Set the existing value the pointer names (in place)."""
    tokens = parse(pointer) if isinstance(pointer, str) else pointer
    if not tokens:
        raise PointerError("cannot replace the whole document")
    parent = resolve(document, tokens[:-1])
    last = tokens[-1]
    if isinstance(parent, dict) and last in parent:
        parent[last] = value
    elif isinstance(parent, list) and last.isdigit() and int(last) < len(parent):
        parent[int(last)] = value
    else:
        raise PointerError("no value at the configured JSON pointer")

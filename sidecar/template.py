"""Reply templates for the generic JSON adapter.

A template is a JSON value (written in the policy file) whose strings may hold
placeholders. Substitution happens on the parsed structure, never on JSON text,
so a refusal or generated answer can never break out of its string. A string
that is exactly one placeholder takes the value's own JSON type (a score stays a
number, ``{{unsafe}}`` a boolean); a placeholder inside longer text is
formatted as text.

Placeholders: ``{{reply}}``, ``{{verdict}}`` (safe/unsafe/unknown),
``{{unsafe}}``, ``{{category}}``, ``{{score}}``, ``{{action}}``, and
``{{request:/json/pointer}}`` to copy a value from the request (a
conversation id, say).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from sidecar import jsonptr

_PLACEHOLDER = re.compile(r"\{\{\s*([a-z_]+)(?::([^}]*))?\s*\}\}")
NAMES = frozenset({"reply", "verdict", "unsafe", "category", "score", "action", "request"})


class TemplateError(ValueError):
    """The template names an unknown placeholder."""


def validate(template: Any) -> None:
    """Raise :class:`TemplateError` on unknown placeholders or a template without ``{{reply}}``."""
    found: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, str):
            for match in _PLACEHOLDER.finditer(node):
                name = match.group(1)
                if name not in NAMES:
                    raise TemplateError(f"unknown placeholder {{{{{name}}}}} in reply_template")
                if name == "request":
                    jsonptr.parse((match.group(2) or "").strip())
                found.add(name)
        elif isinstance(node, Mapping):
            for key, value in node.items():
                walk(key)
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(template)
    if "reply" not in found:
        raise TemplateError("reply_template must contain {{reply}}")


def render(template: Any, values: Mapping[str, Any], request: Any = None) -> Any:
    """Return a copy of ``template`` with placeholders replaced from ``values``."""

    def lookup(match: re.Match[str]) -> Any:
        name = match.group(1)
        if name == "request":
            try:
                return jsonptr.resolve(request, (match.group(2) or "").strip())
            except jsonptr.PointerError:
                return None
        return values.get(name)

    def sub(node: Any) -> Any:
        if isinstance(node, str):
            whole = _PLACEHOLDER.fullmatch(node.strip())
            if whole is not None:
                return lookup(whole)
            return _PLACEHOLDER.sub(lambda m: _as_text(lookup(m)), node)
        if isinstance(node, Mapping):
            return {sub(k) if isinstance(k, str) else k: sub(v) for k, v in node.items()}
        if isinstance(node, list):
            return [sub(item) for item in node]
        return node

    return sub(template)


def _as_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)

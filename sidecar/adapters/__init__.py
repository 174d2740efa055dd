"""Wire formats of legacy chatbots: parse a request, shape a reply as the upstream would."""

from __future__ import annotations

from sidecar.adapters.anthropic import AnthropicAdapter
from sidecar.adapters.base import Adapter, Reply
from sidecar.adapters.completions import CompletionsAdapter
from sidecar.adapters.generic import JsonAdapter
from sidecar.adapters.openai import OpenAIAdapter
from sidecar.adapters.responses import ResponsesAdapter
from sidecar.policy import Route

_BUILT_IN: dict[str, type[Adapter]] = {
    "openai": OpenAIAdapter,
    "completions": CompletionsAdapter,
    "responses": ResponsesAdapter,
    "anthropic": AnthropicAdapter,
}


def adapter_for(route: Route) -> Adapter:
    """The adapter a policy route names."""
    built_in = _BUILT_IN.get(route.adapter)
    return built_in() if built_in is not None else JsonAdapter(route)


__all__ = [
    "Adapter",
    "AnthropicAdapter",
    "CompletionsAdapter",
    "JsonAdapter",
    "OpenAIAdapter",
    "Reply",
    "ResponsesAdapter",
    "adapter_for",
]

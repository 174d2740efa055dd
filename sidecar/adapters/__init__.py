"""Wire formats of legacy chatbots: parse a request, shape a reply as the upstream would."""

from __future__ import annotations

from sidecar.adapters.base import Adapter, Reply
from sidecar.adapters.generic import JsonAdapter
from sidecar.adapters.openai import OpenAIAdapter
from sidecar.policy import Route


def adapter_for(route: Route) -> Adapter:
    """The adapter a policy route names."""
    if route.adapter == "openai":
        return OpenAIAdapter()
    return JsonAdapter(route)


__all__ = ["Adapter", "JsonAdapter", "OpenAIAdapter", "Reply", "adapter_for"]

"""The key/value cache's name in transformers' forward calls and outputs, across releases.

transformers 5.x renamed ``past_key_values`` to ``cache`` (the old name warns
and goes away in 5.40); releases before the rename know only the old one.
The name is read once from the model's own ``forward`` signature, so every
call uses the name the installed release expects and none warns.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

OLD, NEW = "past_key_values", "cache"


@functools.lru_cache(maxsize=32)
def _name_for(model_type: Any) -> str:
    try:
        params = inspect.signature(model_type.forward).parameters
    except (TypeError, ValueError):
        return OLD
    return NEW if NEW in params else OLD


def cache_kwargs(model: Any, cache: Any) -> dict[str, Any]:
    """``{name: cache}`` for ``model(...)``, under the name its release expects."""
    return {_name_for(type(model)): cache}  # type: ignore[arg-type]


def output_cache(output: Any) -> Any:
    """The cache a forward call returned (``output.cache`` on new releases)."""
    fields = getattr(output, "__dataclass_fields__", {})
    if NEW in fields:
        return getattr(output, NEW)
    return getattr(output, OLD)


def crop(cache: Any, length: int) -> None:
    """Keep the first ``length`` positions of ``cache`` (drop what was read after them).

    ``Cache.crop`` took the length to keep before transformers 5.x and takes
    the (negative) number of positions to drop since; which one is read from
    its signature.
    """
    current = int(cache.get_seq_length())
    if length >= current:
        return
    params = inspect.signature(cache.crop).parameters
    cache.crop(length if "max_length" in params else length - current)

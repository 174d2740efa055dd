"""Probe-layer states that reuse the chat template's shared prefix.

Every prompt is formatted with the same template head (for SmolLM2: its
default system prompt, 22 tokens of a typical ~45-token request). Attention
is causal, so the keys and values of those tokens are the same for every
request: they are computed once at start-up and every forward pass runs only
the tokens after them. That halves the work
per request, and more so in a batch, where the shared part would otherwise be
recomputed once per row.

Exactness: a row uses the cached prefix only when its token ids *start with*
the prefix ids (the tokenizer could merge across the boundary for unusual
text, or a conversation may carry its own system prompt); other rows take the
plain path. Positions continue after the prefix, and left padding of the
suffixes is masked out, so the states equal a plain forward pass up to float
rounding (checked by the tests).
"""

from __future__ import annotations

import contextlib
import copy
from typing import Any

import torch

from steerguard.model.chat import normalise_request
from steerguard.model.hooks import StopForward, layer_hooks
from steerguard.model.host import ModelHost

# User texts whose formatted token ids differ right after the template head.
_PROBES = ("a", "Zebra", "1 + 1", "?", " x", "\n\ny")


def template_prefix(host: ModelHost) -> list[int]:
    """Token ids every formatted single-prompt request starts with (may be empty).

    The common head of a few formatted probes (some starting with whitespace,
    which the tokenizer merges with the ``\n`` after the role), less one more
    token for safety. A row that does not start with it is still handled
    exactly: it takes the plain path.
    """
    rows = [host.token_ids(normalise_request(text)) for text in _PROBES]
    n = 0
    while all(len(r) > n for r in rows) and len({r[n] for r in rows}) == 1:
        n += 1
    return rows[0][: max(0, n - 1)]


class SharedPrefix:
    """The template prefix's key/value cache, and forward passes that start after it."""

    def __init__(self, host: ModelHost, prefix_ids: list[int]) -> None:
        if not prefix_ids:
            raise ValueError("empty prefix")
        self.host = host
        self.ids = list(prefix_ids)
        with torch.inference_mode():
            out = host.model.model(input_ids=torch.tensor([self.ids]), use_cache=True)
        self._cache: Any = out.past_key_values

    @classmethod
    def for_host(cls, host: ModelHost, min_tokens: int = 4) -> SharedPrefix | None:
        """None when the template has no shared head worth caching."""
        ids = template_prefix(host)
        return cls(host, ids) if len(ids) >= min_tokens else None

    def __len__(self) -> int:
        return len(self.ids)

    def fits(self, row: list[int]) -> bool:
        """True when ``row`` starts with the prefix and has at least one token after it."""
        n = len(self.ids)
        return len(row) > n and row[:n] == self.ids

    @torch.inference_mode()
    def last_token_states(self, rows: list[list[int]], layer: int) -> torch.Tensor:
        """``[B, H]`` states of ``layer`` at each row's last token (rows must :meth:`fits`)."""
        n = len(self.ids)
        suffixes = [r[n:] for r in rows]
        width = max(len(s) for s in suffixes)
        batch = len(rows)
        pad_id = int(self.host.tokenizer.pad_token_id)
        ids = torch.full((batch, width), pad_id, dtype=torch.long)
        mask = torch.zeros((batch, width), dtype=torch.long)
        for i, s in enumerate(suffixes):
            ids[i, width - len(s) :] = torch.tensor(s, dtype=torch.long)
            mask[i, width - len(s) :] = 1
        attention = torch.cat([torch.ones((batch, n), dtype=torch.long), mask], dim=1)
        positions = n + (mask.cumsum(dim=1) - 1).clamp(min=0)
        cache = copy.deepcopy(self._cache)  # the forward pass appends to it
        if batch > 1:
            cache.batch_repeat_interleave(batch)
        found: dict[str, torch.Tensor] = {}

        def read(hidden: torch.Tensor) -> None:
            found["states"] = hidden[:, -1, :].detach().float().clone()
            raise StopForward

        with layer_hooks(self.host.layers, {layer: read}), contextlib.suppress(StopForward):
            self.host.model.model(
                input_ids=ids,
                attention_mask=attention,
                position_ids=positions,
                past_key_values=cache,
                use_cache=True,
            )
        return found["states"]

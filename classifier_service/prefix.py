"""Probe-layer states that reuse the chat template's shared prefix.

Every prompt is formatted with the same template head (for SmolLM2: its
default system prompt, 22 tokens of a typical ~45-token request). Attention
is causal, so the keys and values of those tokens are the same for every
request: they are computed once at start-up and every forward pass runs only
the tokens after them. That halves the work
per request, and more so in a batch, where the shared part would otherwise be
recomputed once per row. The suffixes of a batch are packed into as few rows
as pays off (:mod:`classifier_service.packing`), so one long prompt does not
make every short one pay for its length in padding.

Exactness: a row uses the cached prefix only when its token ids *start with*
the prefix ids (the tokenizer could merge across the boundary for unusual
text, or a conversation may carry its own system prompt); other rows take the
plain path. Positions continue after the prefix, each packed prompt sees only
the prefix and itself, and padding is masked out, so the states equal a plain forward pass up to float
rounding (checked by the tests).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable
from typing import Any

import torch

from classifier_service.packing import Lines, attention_weight, plan_lines
from steerguard.model.activations import LayerStates, StopRule
from steerguard.model.chat import normalise_request
from steerguard.model.hooks import StopForward, layer_hooks
from steerguard.model.host import ModelHost
from steerguard.model.kv import cache_kwargs, output_cache
from steerguard.model.spans import Span

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
        with torch.inference_mode(), host.forward_lock:  # another core may be serving on this host
            out = host.model.model(input_ids=torch.tensor([self.ids]), use_cache=True)
        self._cache: Any = output_cache(out)
        first = host.layers[0]
        self._pair_weight = attention_weight(
            host.identity.hidden_size, sum(p.numel() for p in first.parameters())
        )

    @classmethod
    def for_host(cls, host: ModelHost, min_tokens: int = 4) -> SharedPrefix | None:
        """None when the template has no shared head worth caching."""
        ids = template_prefix(host)
        return cls(host, ids) if len(ids) >= min_tokens else None

    def __len__(self) -> int:
        return len(self.ids)

    def cache(self) -> Any:
        """A copy of the prefix's keys and values, for a forward pass to extend."""
        return copy.deepcopy(self._cache)

    def fits(self, row: list[int]) -> bool:
        """True when ``row`` starts with the prefix and has at least one token after it."""
        n = len(self.ids)
        return len(row) > n and row[:n] == self.ids

    def last_token_states(self, rows: list[list[int]], layer: int, plan: Lines | None = None) -> torch.Tensor:
        """``[B, H]`` states of ``layer`` at each row's last token (rows must :meth:`fits`)."""
        return self.states_at(rows, [layer], plan).states[layer]

    @torch.inference_mode()
    def states_at(
        self,
        rows: list[list[int]],
        layers: list[int],
        plan: Lines | None = None,
        stop: StopRule | None = None,
        spans: list[Span] | None = None,
    ) -> LayerStates:
        """States at each row's last token for ``layers`` (rows must :meth:`fits`).

        The suffixes are packed into lines (:mod:`classifier_service.packing`;
        ``plan`` overrides the choice, e.g. one row per line to compare):
        each token attends to the prefix and to the earlier tokens of its own
        prompt, and positions restart after the prefix for every prompt.
        ``stop`` may end the pass after a shallower layer (the early exit);
        deeper layers are then missing from the result. ``spans`` (token
        positions of each row) ask also for the deepest layer's mean state
        over each span (its part after the prefix).
        """
        n = len(self.ids)
        suffixes = [r[n:] for r in rows]
        plan = plan or plan_lines([len(s) for s in suffixes], n, self._pair_weight)
        ids, positions, segment, ends = self._pack(suffixes, plan)
        out = LayerStates({})
        deepest = max(layers)

        def reader(index: int) -> Callable[[torch.Tensor], None]:
            def read(hidden: torch.Tensor) -> None:
                out.states[index] = hidden[ends[:, 0], ends[:, 1], :].detach().float().clone()
                if index == deepest and spans is not None:
                    out.content = self._span_means(hidden, ends, [len(s) for s in suffixes], spans)
                if index == deepest or (stop is not None and stop(index, out.states[index])):
                    raise StopForward

            return read

        cache = self.cache()  # the forward pass appends to it
        if len(plan.lines) > 1:
            cache.batch_repeat_interleave(len(plan.lines))
        with layer_hooks(self.host.layers, {i: reader(i) for i in layers}), contextlib.suppress(StopForward):
            self.host.model.model(
                input_ids=ids,
                attention_mask=self._mask(segment),
                position_ids=positions,
                **cache_kwargs(self.host.model.model, cache),
                use_cache=True,
            )
        return out

    def _pack(
        self, suffixes: list[list[int]], plan: Lines
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Token ids, positions, segment ids (-1: padding) per line, and each row's (line, last column)."""
        n = len(self.ids)
        lines, width = len(plan.lines), plan.width
        pad_id = int(self.host.tokenizer.pad_token_id)
        ids = torch.full((lines, width), pad_id, dtype=torch.long)
        positions = torch.full((lines, width), n, dtype=torch.long)
        segment = torch.full((lines, width), -1, dtype=torch.long)
        ends = torch.empty((len(suffixes), 2), dtype=torch.long)
        for line, members in enumerate(plan.lines):
            col = width - sum(len(suffixes[i]) for i in members)  # left padding
            for i in members:
                k = len(suffixes[i])
                ids[line, col : col + k] = torch.tensor(suffixes[i], dtype=torch.long)
                positions[line, col : col + k] = torch.arange(n, n + k)
                segment[line, col : col + k] = i
                ends[i] = torch.tensor([line, col + k - 1])
                col += k
        return ids, positions, segment, ends

    def _span_means(
        self, hidden: torch.Tensor, ends: torch.Tensor, lengths: list[int], spans: list[Span]
    ) -> torch.Tensor:
        """``[B, H]`` mean of each row's states over its span, clipped to the part after the prefix."""
        n = len(self.ids)
        out = torch.empty((len(spans), hidden.shape[-1]))
        for i, (s, e) in enumerate(spans):
            line, last = int(ends[i, 0]), int(ends[i, 1])
            column = last - lengths[i] + 1 - n  # column of row position p: column + p
            a = column + max(s, n)  # the prefix's positions are not in this pass
            out[i] = hidden[line, a : max(column + e, a + 1)].float().mean(0)
        return out

    def _mask(self, segment: torch.Tensor) -> torch.Tensor:
        """Additive ``[lines, 1, width, prefix + width]`` mask (0 = attend).

        Every query sees the whole prefix (padding queries too, so no row of
        the softmax is empty); a real token also sees the earlier tokens of
        its own prompt. Additive rather than boolean, so eager attention
        reads it the same way as SDPA.
        """
        lines, width = segment.shape
        col = torch.arange(width)
        own = (segment[:, :, None] == segment[:, None, :]) & (segment[:, None, :] >= 0)
        allowed = own & (col[None, :, None] >= col[None, None, :])
        allowed = torch.cat([torch.ones((lines, width, len(self.ids)), dtype=torch.bool), allowed], dim=2)
        dtype = self.host.model.dtype
        mask = torch.zeros(allowed.shape, dtype=dtype)
        mask.masked_fill_(~allowed, torch.finfo(dtype).min)
        return mask[:, None]

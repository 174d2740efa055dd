"""Batched decoding with a KV cache and per-row steering.

A plain loop instead of ``model.generate`` because each row carries its own
steering (or none), the gate for AUTO/SCANS is decided inside the prompt's
forward pass, and the steer service needs per-step control (streaming,
cancellation). The steer service's continuous batcher builds on
:func:`prefill` / :func:`decode_step`; the offline CLI uses :func:`generate`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from steerguard.model.host import Batch, ModelHost
from steerguard.model.kv import cache_kwargs, output_cache
from steerguard.model.steering import SteeringState, apply_steering


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None


@dataclass
class RowOutput:
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str = ""


def make_generator(seed: int | None) -> torch.Generator | None:
    if seed is None:
        return None
    gen = torch.Generator()
    gen.manual_seed(int(seed))
    return gen


def pick_token(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> int:
    """Greedy at temperature 0, otherwise nucleus sampling with the row's own generator."""
    if params.temperature <= 0:
        return int(torch.argmax(logits).item())
    logits = logits.cpu()  # the row's generator lives on the CPU
    probs = torch.softmax(logits.float() / params.temperature, dim=-1)
    if 0 < params.top_p < 1:
        sorted_p, sorted_i = _nucleus_candidates(probs, params.top_p)
        keep = sorted_p.cumsum(-1) - sorted_p < params.top_p
        sorted_p = sorted_p * keep
        choice = torch.multinomial(sorted_p / sorted_p.sum(), 1, generator=generator)
        return int(sorted_i[choice].item())
    return int(torch.multinomial(probs, 1, generator=generator).item())


# Candidates ranked before the nucleus is cut: the nucleus nearly always lies among them.
NUCLEUS_CANDIDATES = 1024


def _nucleus_candidates(probs: torch.Tensor, top_p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The vocabulary's probabilities in descending order, as far as the nucleus needs them.

    Why: sorting the whole vocabulary (49k tokens) for every row and step was
    40% of sampled generation's time on 2 cores. The top
    :data:`NUCLEUS_CANDIDATES` are ranked first; only when they hold less than
    ``top_p`` is the whole vocabulary sorted. The rest is padded with zeros
    (the nucleus gives it no mass anyway) so the draw reads a vector of the
    same length and the same prefix as a full sort's: a seeded sample is the
    same token either way.
    """
    if probs.numel() > NUCLEUS_CANDIDATES:
        top_values, top_i = torch.topk(probs, NUCLEUS_CANDIDATES)
        if float(top_values.sum()) >= top_p:
            padded = torch.zeros_like(probs)
            padded[:NUCLEUS_CANDIDATES] = top_values
            return padded, top_i
    return torch.sort(probs, descending=True)


@torch.inference_mode()
def prefill(
    host: ModelHost, batch: Batch, state: SteeringState, extra_layers: set[int] | None = None
) -> tuple[torch.Tensor, Any]:
    """Run the prompts; return last-position logits ``[B, vocab]`` and the KV cache.

    Under the host's forward lock: during a bundle swap two engines share the model, and each
    forward pass must see only its own steering hooks.
    """
    steering = apply_steering(host.layers, state, extra_layers, prompt=True, lm_head=host.lm_head)
    with host.forward_lock, steering:
        out = host.model(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            position_ids=batch.position_ids,
            use_cache=True,
            logits_to_keep=1,
        )
    return out.logits[:, -1, :], output_cache(out)


@torch.inference_mode()
def decode_step(
    host: ModelHost,
    tokens: torch.Tensor,
    attention_mask: torch.Tensor,
    positions: torch.Tensor,
    cache: Any,
    state: SteeringState,
) -> tuple[torch.Tensor, Any]:
    """One token per row: ``tokens``/``positions`` are ``[B]``, mask covers cache + new token."""
    with host.forward_lock, apply_steering(host.layers, state, lm_head=host.lm_head):
        out = host.model(
            input_ids=tokens.to(attention_mask.device)[:, None],
            attention_mask=attention_mask,
            position_ids=positions[:, None],
            **cache_kwargs(host.model, cache),
            use_cache=True,
        )
    return out.logits[:, -1, :], output_cache(out)


def generate(
    host: ModelHost,
    batch: Batch,
    state: SteeringState,
    params: Sequence[SamplingParams],
    *,
    extra_layers: set[int] | None = None,
    on_token: Callable[[int, int], None] | None = None,
) -> list[RowOutput]:
    """Decode every row until EOS or its ``max_new_tokens`` (static batch)."""
    n = batch.size
    eos = host.eos_token_ids
    gens = [make_generator(p.seed) for p in params]
    outs = [RowOutput() for _ in range(n)]
    logits, cache = prefill(host, batch, state, extra_layers)
    mask = batch.attention_mask
    positions = batch.position_ids[:, -1].clone()
    active = [True] * n
    last = torch.zeros(n, dtype=torch.long, device=mask.device)
    step = 0
    while True:
        for i in range(n):
            if not active[i]:
                continue
            tok = pick_token(logits[i], params[i], gens[i])
            last[i] = tok
            if tok in eos:
                outs[i].finish_reason = "stop"
                active[i] = False
                continue
            outs[i].token_ids.append(tok)
            if on_token is not None:
                on_token(i, tok)
            if len(outs[i].token_ids) >= params[i].max_new_tokens:
                outs[i].finish_reason = "length"
                active[i] = False
        if not any(active):
            return outs
        mask = torch.cat([mask, mask.new_ones((n, 1))], dim=1)
        positions = positions + 1
        step += 1
        state.after_step(step)
        logits, cache = decode_step(host, last, mask, positions, cache, state)


# -- continuous batching ---------------------------------------------------------
#
# The steer service keeps one running batch and lets requests join and leave
# between decode steps. Rows that join are prefilled on their own (with their
# own steering plan, so AUTO/SCANS gates are decided in their prompt pass),
# then appended to the running batch by left-padding the shorter KV cache with
# masked zeros; rows that leave are sliced out. Left padding is masked and
# positions are explicit, so a row decodes the same tokens whatever it is
# batched with (up to float reduction order).


def _kv_layers(cache: Any) -> list[Any]:
    """The per-layer key/value holders of a transformers ``DynamicCache``."""
    layers = getattr(cache, "layers", None)
    if layers is None:
        raise TypeError(f"unsupported KV cache {type(cache).__name__}: no .layers")
    for layer in layers:
        if getattr(layer, "is_sliding", False) or not hasattr(layer, "keys"):
            raise TypeError(f"unsupported KV cache layer {type(layer).__name__}")
    return list(layers)


def supports_row_merge(cache: Any) -> bool:
    """Whether rows can be appended to / removed from ``cache`` between steps."""
    try:
        _kv_layers(cache)
    except TypeError:
        return False
    return True


def _left_pad(t: torch.Tensor, width: int) -> torch.Tensor:
    """Left-pad the sequence axis (-2) of ``[B, heads, T, D]`` to ``width`` with zeros."""
    extra = width - t.shape[-2]
    return t if extra == 0 else torch.nn.functional.pad(t, (0, 0, extra, 0))


@dataclass
class DecodeBatch:
    """The tensors of a running batch between decode steps.

    ``logits`` ``[B, vocab]`` are the next-token logits of every row,
    ``positions`` ``[B]`` the position of the last token fed, and the mask
    covers the whole cache. ``state`` is decided (no gate pending).
    """

    cache: Any
    attention_mask: torch.Tensor
    positions: torch.Tensor
    logits: torch.Tensor
    state: SteeringState

    @property
    def size(self) -> int:
        return int(self.attention_mask.shape[0])

    @property
    def width(self) -> int:
        return int(self.attention_mask.shape[1])

    @classmethod
    def start(
        cls, host: ModelHost, batch: Batch, state: SteeringState, extra_layers: set[int] | None = None
    ) -> DecodeBatch:
        """Prefill ``batch``; a gated ``state`` is decided during this pass."""
        logits, cache = prefill(host, batch, state, extra_layers)
        decided = state.decided_copy()
        return cls(cache, batch.attention_mask.clone(), batch.position_ids[:, -1].clone(), logits, decided)

    def step(self, host: ModelHost, tokens: torch.Tensor) -> None:
        """Feed one token per row (``tokens`` ``[B]``) and update the logits."""
        ones = self.attention_mask.new_ones((self.size, 1))
        self.attention_mask = torch.cat([self.attention_mask, ones], dim=1)
        self.positions = self.positions + 1
        self.logits, self.cache = decode_step(
            host, tokens, self.attention_mask, self.positions, self.cache, self.state
        )

    def select(self, keep: Sequence[int]) -> None:
        """Keep only rows ``keep`` (in that order) and drop columns no row attends to any more."""
        index = torch.tensor(list(keep), dtype=torch.long, device=self.attention_mask.device)
        self.attention_mask = self.attention_mask.index_select(0, index)
        self.positions = self.positions.index_select(0, index)
        self.logits = self.logits.index_select(0, index)
        self.state.select_rows(index)
        self.state.drop_zero_layers()
        if not supports_row_merge(self.cache):
            self.cache.batch_select_indices(index)  # e.g. sliding-window layers: rows only
            return
        used = self.attention_mask.any(dim=0).nonzero()
        first = int(used[0]) if len(used) else 0
        self.attention_mask = self.attention_mask[:, first:]
        for layer in _kv_layers(self.cache):
            layer.keys = layer.keys.index_select(0, index)[:, :, first:, :]
            layer.values = layer.values.index_select(0, index)[:, :, first:, :]

    def extend(self, other: DecodeBatch) -> None:
        """Append ``other``'s rows (left-padding whichever cache is shorter)."""
        mine, theirs = _kv_layers(self.cache), _kv_layers(other.cache)
        if len(mine) != len(theirs):
            raise ValueError("caches of different depth")
        rows, width = self.size, max(self.width, other.width)
        for a, b in zip(mine, theirs, strict=True):
            a.keys = torch.cat([_left_pad(a.keys, width), _left_pad(b.keys, width)], dim=0)
            a.values = torch.cat([_left_pad(a.values, width), _left_pad(b.values, width)], dim=0)
        pad = torch.nn.functional.pad
        self.attention_mask = torch.cat(
            [
                pad(self.attention_mask, (width - self.width, 0)),
                pad(other.attention_mask, (width - other.width, 0)),
            ],
            dim=0,
        )
        self.state = self.state.concat(other.state, rows, other.size)
        self.positions = torch.cat([self.positions, other.positions])
        self.logits = torch.cat([self.logits, other.logits], dim=0)

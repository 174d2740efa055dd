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
    probs = torch.softmax(logits.float() / params.temperature, dim=-1)
    if 0 < params.top_p < 1:
        sorted_p, sorted_i = torch.sort(probs, descending=True)
        keep = sorted_p.cumsum(-1) - sorted_p < params.top_p
        sorted_p = sorted_p * keep
        choice = torch.multinomial(sorted_p / sorted_p.sum(), 1, generator=generator)
        return int(sorted_i[choice].item())
    return int(torch.multinomial(probs, 1, generator=generator).item())


@torch.inference_mode()
def prefill(host: ModelHost, batch: Batch, state: SteeringState, extra_layers: set[int] | None = None) -> tuple[torch.Tensor, Any]:
    """Run the prompts; return last-position logits ``[B, vocab]`` and the KV cache."""
    with apply_steering(host.layers, state, extra_layers):
        out = host.model(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            position_ids=batch.position_ids,
            use_cache=True,
            logits_to_keep=1,
        )
    return out.logits[:, -1, :], out.past_key_values


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
    with apply_steering(host.layers, state):
        out = host.model(
            input_ids=tokens[:, None],
            attention_mask=attention_mask,
            position_ids=positions[:, None],
            past_key_values=cache,
            use_cache=True,
        )
    return out.logits[:, -1, :], out.past_key_values


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
    last = torch.zeros(n, dtype=torch.long)
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
        mask = torch.cat([mask, torch.ones((n, 1), dtype=mask.dtype)], dim=1)
        positions = positions + 1
        logits, cache = decode_step(host, last, mask, positions, cache, state)

"""Steering directions: refusal (Arditi / SCANS) and per-category (SafeSteer).

Why each piece:

- **Difference of means** (Arditi et al.): harmful − benign mean of the last
  prompt token's state per layer. Cheap (reuses the probe's states) but, on
  a 135M model that barely refuses, it mostly encodes "this is a harmful
  topic", not "I refuse".
- **Contrastive** (prefix pairs): the same prompts followed by a refusing
  assistant prefix ("I'm sorry, but I cannot") versus a complying one
  ("Sure, here is"), averaged over the prefix tokens and over several pairs
  so no single token's identity dominates. It encodes the behaviour we want
  to switch on, which is why it steers better on small models.
- **Layer choice by vocabulary projection** (SCANS): each layer's direction is
  pushed through the final norm and the LM head; the layer scores by how much
  it raises refusal tokens ("Sorry", "cannot", ...) over compliance tokens
  ("Sure", "Here", ...), in z-units of the logit distribution. The best
  layers of the middle band (30-60 % of depth; late layers score high but
  only rewrite surface tokens, early ones barely project), at least 3 apart,
  are the candidates; generation on a few calibration prompts then picks
  the number of layers and the strength.
- **Residual norms** exclude each row's first token: it is an attention sink
  whose norm is tens of times the others' and would make any strength
  relative to "the typical norm" meaningless.
- **Category vectors** (SafeSteer): per category, its harmful mean minus the
  benign mean, with the component along the direction shared by all harmful
  categories removed, so what is left is what makes *this* category
  distinct. Stored negated: every bundle vector is oriented so that *adding*
  it (sign +1) steers toward safety; for a category vector that means away
  from the category's own features (a safe, on-topic answer, not a refusal).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from steerguard.calibration.config import DEFAULTS
from steerguard.model.activations import reduced_states
from steerguard.model.chat import Conversation
from steerguard.model.host import ModelHost

REFUSAL_PREFIXES = (
    "I'm sorry, but I can't help with that.",
    "I'm sorry, but I cannot assist with that request.",
    "I can't help with that, sorry.",
)
COMPLY_PREFIXES = (
    "Sure, here is how to do it. First,",
    "Of course! Here's a step-by-step guide:",
    "Absolutely. Here are the details you asked for:",
)
REFUSAL_TOKENS = ("Sorry", " sorry", "I", " cannot", " unable", " apologize", "Unfortunately", " refuse")
COMPLY_TOKENS = ("Sure", " Sure", "Here", "Certainly", "Step", "1", "**", "To", "Title")


def unit(v: torch.Tensor, dim: int = -1) -> torch.Tensor:
    return v / v.norm(dim=dim, keepdim=True).clamp_min(1e-8)


def mean_difference(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """Unit ``mean(pos) - mean(neg)`` per layer; inputs ``[N, L, H]``, output ``[L, H]``."""
    return unit(pos.float().mean(0) - neg.float().mean(0))


@torch.inference_mode()
def suffix_mean_states(
    host: ModelHost,
    rows: Sequence[Sequence[int]],
    suffix_lens: Sequence[int],
    layers: Sequence[int],
) -> torch.Tensor:
    """Mean state over each row's last ``suffix_lens[i]`` tokens: ``[B, len(layers), H]``."""
    batch = host.pad(rows)
    width = batch.input_ids.shape[1]
    sel = torch.zeros((len(rows), width), dtype=torch.float32, device=batch.input_ids.device)
    for i, k in enumerate(suffix_lens):
        sel[i, width - k :] = 1.0 / k
    wanted = sorted(set(layers))
    found = reduced_states(host, batch, wanted, lambda hidden: torch.einsum("bt,bth->bh", sel, hidden))
    return torch.stack([found[i] for i in wanted], dim=1)


def _prefix_ids(host: ModelHost, text: str) -> list[int]:
    return [int(i) for i in host.tokenizer(text, add_special_tokens=False)["input_ids"]]


def contrastive_direction(
    host: ModelHost,
    convs: Sequence[Conversation],
    *,
    batch_size: int = 16,
    progress: bool = False,
) -> torch.Tensor:
    """Unit ``mean(refusing prefix) - mean(complying prefix)`` per layer, ``[L, H]``."""
    layers = list(range(host.loaded_layers))
    prompt_ids = [host.token_ids(c) for c in convs]
    zeros = torch.zeros((len(layers), host.identity.hidden_size))
    sums: dict[str, torch.Tensor] = {"refuse": zeros.clone(), "comply": zeros.clone()}
    counts = {"refuse": 0, "comply": 0}
    jobs = [("refuse", p) for p in REFUSAL_PREFIXES] + [("comply", p) for p in COMPLY_PREFIXES]
    work = [(side, pid, _prefix_ids(host, prefix)) for side, prefix in jobs for pid in prompt_ids]
    work.sort(key=lambda w: len(w[1]) + len(w[2]))
    starts = range(0, len(work), batch_size)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc="contrastive", unit="batch")  # type: ignore[assignment]
    for start in starts:
        chunk = work[start : start + batch_size]
        states = suffix_mean_states(host, [p + s for _, p, s in chunk], [len(s) for _, _, s in chunk], layers)
        for (side, _, _), st in zip(chunk, states, strict=True):
            sums[side] += st
            counts[side] += 1
    diff = sums["refuse"] / counts["refuse"] - sums["comply"] / counts["comply"]
    return unit(diff)


@torch.inference_mode()
def residual_norms(host: ModelHost, convs: Sequence[Conversation], *, batch_size: int = 16) -> torch.Tensor:
    """Mean residual norm per layer over real tokens, each row's first token excluded: ``[L]``."""
    n_layers = host.loaded_layers
    total = torch.zeros(n_layers, dtype=torch.float64)
    count = 0
    for start in range(0, len(convs), batch_size):
        batch = host.encode(convs[start : start + batch_size])
        mask = batch.attention_mask.clone()
        first = mask.argmax(dim=1)  # left padding: first real token
        mask[torch.arange(mask.shape[0]), first] = 0
        keep = mask.bool()

        def norm_sum(hidden: torch.Tensor, keep: torch.Tensor = keep) -> torch.Tensor:
            return hidden.norm(dim=-1)[keep].sum()

        found = reduced_states(host, batch, range(n_layers), norm_sum)
        for i in range(n_layers):
            total[i] += float(found[i])
        count += int(keep.sum())
    return (total / max(count, 1)).float()


def token_ids(host: ModelHost, words: Sequence[str]) -> list[int]:
    """First token of each word (deduplicated, order kept)."""
    out: list[int] = []
    for w in words:
        ids = _prefix_ids(host, w)
        if ids and ids[0] not in out:
            out.append(ids[0])
    return out


@dataclass
class LayerProjection:
    layer: int
    score: float
    refusal_z: float
    comply_z: float
    top_tokens: list[str]

    def as_dict(self) -> dict[str, object]:
        return {
            "layer": self.layer,
            "score": round(self.score, 4),
            "refusal_z": round(self.refusal_z, 4),
            "comply_z": round(self.comply_z, 4),
            "top_tokens": self.top_tokens,
        }


@torch.inference_mode()
def vocab_projection(host: ModelHost, directions: torch.Tensor, norms: torch.Tensor) -> list[LayerProjection]:
    """SCANS layer scores: refusal minus compliance token z-logits of each layer's direction."""
    refuse = token_ids(host, REFUSAL_TOKENS)
    comply = token_ids(host, COMPLY_TOKENS)
    out = []
    for layer in range(directions.shape[0]):
        v = directions[layer] * norms[layer]
        logits = host.lm_head(host.final_norm(v[None, None, :].to(torch.float32)))[0, 0].float()
        z = (logits - logits.mean()) / logits.std().clamp_min(1e-6)
        rz, cz = float(z[refuse].mean()), float(z[comply].mean())
        top = [host.tokenizer.decode([int(i)]) for i in torch.topk(logits, 8).indices]
        out.append(LayerProjection(layer, rz - cz, rz, cz, top))
    return out


def candidate_layers(
    projections: Sequence[LayerProjection],
    n_layers: int,
    *,
    count: int = 3,
    lo: float = DEFAULTS.layer_band[0],
    hi: float = DEFAULTS.layer_band[1],
    spacing: int = 3,
    floor: int = 0,
) -> list[int]:
    """Layers ranked by projection score within a band of depth, at least ``spacing`` apart.

    Returned best first. Spacing spreads the push over depth: adjacent layers
    carry nearly the same direction, and stacking them is what breaks fluency.
    No layer below ``floor`` is returned: calibration passes the probe layer,
    because in ``auto`` a gated prompt's positions have already passed the
    layers below it (see :mod:`steerguard.model.steering`). When the band
    holds no layer at or above ``floor``, every layer from ``floor`` up is a
    candidate.
    """
    above = [p for p in projections if p.layer >= floor]
    band = [p for p in above if lo * n_layers <= p.layer <= hi * n_layers] or above
    chosen: list[int] = []
    for p in sorted(band, key=lambda p: p.score, reverse=True):
        if all(abs(p.layer - q) >= spacing for q in chosen):
            chosen.append(p.layer)
        if len(chosen) == count:
            break
    return chosen


def category_directions(
    harmful: torch.Tensor,
    harmful_categories: Sequence[str | None],
    benign: torch.Tensor,
    categories: Sequence[str],
) -> dict[str, torch.Tensor]:
    """SafeSteer vectors ``{category: [L, H]}`` with the shared harmful direction removed.

    ``harmful``/``benign`` are last-token states ``[N, L, H]``. The result is
    negated so adding it steers away from the category.
    """
    shared = mean_difference(harmful, benign)  # [L, H]
    base = benign.float().mean(0)
    out = {}
    for cat in categories:
        rows = [i for i, c in enumerate(harmful_categories) if c == cat]
        if not rows:
            continue
        v = harmful[rows].float().mean(0) - base
        v = v - (v * shared).sum(-1, keepdim=True) * shared
        out[cat] = -unit(v)
    return out

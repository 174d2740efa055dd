"""Fixtures for tests and benchmarks: tiny random-weight Llama models and random bundles.

Unit tests run on a 4-layer Llama with random weights and the embedded
model's tokenizer (so chat formatting is the real one); only integration tests
load SmolLM2 itself.
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path

import torch

from steerguard.bundle import Bundle
from steerguard.manifest import (
    CATEGORY_PREFIX,
    REFUSAL,
    Manifest,
    ModelInfo,
    PassageInfo,
    ProbeInfo,
    ResponseInfo,
    VectorInfo,
)
from steerguard.model.host import ModelHost
from steerguard.responses import FEATURES

# Spread of the tiny model's LM-head weights: logits' spread is ~8x this (final norm of 64 units).
HEAD_STD = 0.5


def make_tiny_llama(folder: str | Path, *, layers: int = 4, hidden: int = 64, seed: int = 0) -> Path:
    """Write a random-weight Llama with SmolLM2's tokenizer to ``folder``.

    Why an untied, larger head: with the default initialisation every logit is
    near zero, so the next-token distribution is flat over 49k tokens and
    nucleus sampling has to sort the whole vocabulary at every step (most of
    the tiny-model calibration test's time). A trained model's odds are
    peaked; :data:`HEAD_STD` gives logits a spread of ~4 so the nucleus lies in
    the top candidates, as it does for SmolLM2.
    """
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from steerguard.model.host import resolve_model

    out = Path(folder)
    smol_dir, _, _ = resolve_model(None)
    tok = AutoTokenizer.from_pretrained(smol_dir)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=False,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
    )
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # peaked next-token odds, as a trained model's: see the docstring
        model.lm_head.weight.normal_(0.0, HEAD_STD)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def _random_head(hidden: int, vocab: int, g: torch.Generator) -> dict[str, torch.Tensor]:
    """A rank-4 refusal head strong enough to change greedy tokens."""
    return {
        "refusal_head.a": torch.randn((hidden, 4), generator=g),
        "refusal_head.b": torch.randn((4, vocab), generator=g) * 5.0,
    }


def make_random_bundle(
    host: ModelHost,
    folder: str | Path,
    *,
    categories: tuple[str, ...] = ("cybercrime", "violence"),
    probe_layer: int | None = None,
    steer_layers: tuple[int, ...] | None = None,
    threshold: float = 0.5,
    seed: int = 0,
    passage_tokens: int | None = None,
    response: bool = False,
    refusal_head: bool = False,
) -> Bundle:
    """A structurally valid bundle with random weights for ``host``'s model.

    ``passage_tokens``: also a random passage probe at the probe layer, windows of that many tokens.
    ``response``: also a random response probe at the probe layer.
    ``refusal_head``: also a random rank-4 refusal head, strong enough to change greedy tokens.
    """
    g = torch.Generator().manual_seed(seed)
    h, n = host.identity.hidden_size, host.identity.num_layers
    probe_layer = n // 2 if probe_layer is None else probe_layer
    steer_layers = steer_layers or (max(0, n // 2 - 1), n // 2)

    def unit(rows: int) -> torch.Tensor:
        v = torch.randn((rows, h), generator=g)
        return v / v.norm(dim=-1, keepdim=True)

    tensors = {
        "probe.mean": torch.zeros(h),
        "probe.std": torch.ones(h),
        "probe.weight": torch.randn(h, generator=g) * 0.1,
        "probe.bias": torch.zeros(1),
        "category.weight": torch.randn((len(categories), h), generator=g) * 0.1,
        "category.bias": torch.zeros(len(categories)),
        "norms": torch.full((n,), 10.0),
        f"vector.{REFUSAL}": unit(n),
    }
    vector = VectorInfo(layers=tuple(steer_layers), strength=0.5)
    vectors = {REFUSAL: vector}
    for c in categories:
        tensors[f"vector.{CATEGORY_PREFIX}{c}"] = unit(n)
        vectors[f"{CATEGORY_PREFIX}{c}"] = vector
    passage = None
    if passage_tokens is not None:
        tensors.update(
            {
                "passage.mean": torch.zeros(2 * h),
                "passage.std": torch.ones(2 * h),
                "passage.weight": torch.randn(2 * h, generator=g) * 0.1,
                "passage.bias": torch.zeros(1),
            }
        )
        passage = PassageInfo(probe_layer, threshold, passage_tokens, passage_tokens // 8)
    if response:  # both heads of the response probe, on the three states each position reads
        for head in ("response", "response_content"):
            tensors.update(
                {
                    f"{head}.mean": torch.zeros(3 * h),
                    f"{head}.std": torch.ones(3 * h),
                    f"{head}.weight": torch.randn(3 * h, generator=g) * 0.1,
                    f"{head}.bias": torch.zeros(1),
                }
            )
    if refusal_head:
        tensors.update(_random_head(h, len(host.tokenizer), g))
    manifest = Manifest(
        refusal_head={"rank": 4, "note": "random"} if refusal_head else None,
        model=ModelInfo(**host.identity.as_dict()),
        probe=ProbeInfo(layer=probe_layer, threshold=threshold, kind="logistic"),
        passage=passage,
        response=ResponseInfo(probe_layer, threshold, FEATURES, content_cut=threshold) if response else None,
        created_at=_dt.datetime(2026, 1, 1, tzinfo=_dt.timezone.utc).isoformat(),
        categories=tuple(categories),
        vectors=vectors,
        note="random weights for tests",
    )
    bundle = Bundle(manifest, tensors)
    bundle.save(folder)
    return bundle

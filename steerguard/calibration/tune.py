"""The steering search: which refusal direction, layers, prompt gain and strength ``auto`` uses.

It generates with AUTO itself (the real serving path) on a few calibration
prompts and picks the weakest steering that makes the strict judge
(:mod:`steerguard.judge`) see a refusal on at least ``target_refusal`` of
harmful prompts while keeping the steered outputs' perplexity under the
unsteered model within ``max_ppl_ratio`` of the unsteered outputs'.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from steerguard import judge
from steerguard.bundle import REFUSAL, Bundle
from steerguard.calibration.config import CalibrationConfig
from steerguard.logs import get_logger
from steerguard.manifest import VectorInfo
from steerguard.model.chat import Conversation
from steerguard.model.host import ModelHost
from steerguard.offline import generate_many, perplexity
from steerguard.plan import Mode, SteeringRequest

log = get_logger(__name__)


@dataclass
class TuneResult:
    variant: str
    layers: list[int]
    strength: float
    refusal: float
    ppl_ratio: float
    samples: list[str] = field(default_factory=list)
    prompt_gain: float = 1.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "variant": self.variant,
            "layers": self.layers,
            "strength": self.strength,
            "prompt_gain": self.prompt_gain,
            "refusal_rate": round(self.refusal, 4),
            "ppl_ratio": round(self.ppl_ratio, 4),
        }


@dataclass
class Search:
    """What one search needs: the model, the provisional bundle, the prompts and the unsteered perplexity."""

    host: ModelHost
    base: Bundle
    harmful: Sequence[Conversation]
    cfg: CalibrationConfig
    base_ppl: float = float("nan")
    tried: list[TuneResult] = field(default_factory=list)

    def attempt(
        self, name: str, direction: torch.Tensor, layers: list[int], strength: float, gain: float
    ) -> TuneResult:
        """Generate with AUTO under one setting; judge and measure it."""
        info = VectorInfo(layers=tuple(layers), strength=float(strength), prompt_gain=float(gain))
        bundle = self.base.with_vector(REFUSAL, info, direction)
        auto = [SteeringRequest(Mode.AUTO)] * len(self.harmful)
        outs = generate_many(self.host, bundle, self.harmful, auto, max_new_tokens=self.cfg.tune_tokens)
        texts = [g.text for g in outs]
        ppl = perplexity(self.host, self.harmful, [g.token_ids for g in outs])
        result = TuneResult(
            name, layers, strength, judge.refusal_rate(texts), ppl / self.base_ppl, texts[:3], gain
        )
        self.tried.append(result)
        log.info("tune", **result.as_dict())
        return result

    def sweep_strengths(
        self, name: str, direction: torch.Tensor, layers: list[int], gain: float
    ) -> TuneResult:
        """Strengths rise until the target is met or fluency is lost; the last setting tried."""
        result: TuneResult | None = None
        for s in self.cfg.strengths:
            result = self.attempt(name, direction, layers, s, gain)
            if result.refusal >= self.cfg.target_refusal or result.ppl_ratio > self.cfg.max_ppl_ratio:
                break  # weakest strength that works, or fluency already lost
        assert result is not None, "the strength grid is empty"
        return result


def tune_refusal(
    host: ModelHost,
    base: Bundle,
    variants: dict[str, tuple[torch.Tensor, list[int]]],
    harmful: Sequence[Conversation],
    cfg: CalibrationConfig,
) -> tuple[TuneResult, list[TuneResult], float]:
    """Search variant x layer set x prompt gain x strength with AUTO generation.

    Returns (best, all tried, unsteered perplexity). For each variant and
    gain, strengths rise until the target refusal rate is met or fluency is
    lost. Gains go from highest down, and a lower gain is tried only when a
    higher one reached the target but lost fluency on the way (the prompt
    gain is what buys refusals without the decode-time strength that costs
    fluency). Among the settings that meet both limits, the most fluent wins.
    """
    plain = generate_many(
        host, None, harmful, [SteeringRequest(Mode.NONE)] * len(harmful), max_new_tokens=cfg.tune_tokens
    )
    search = Search(host, base, harmful, cfg)
    search.base_ppl = perplexity(host, harmful, [g.token_ids for g in plain])
    for name, (direction, ranked) in variants.items():
        if name not in cfg.search_variants:
            continue
        for count in cfg.layer_counts:
            layers = sorted(ranked[:count])
            for gain in sorted(cfg.prompt_gains, reverse=True):
                last = search.sweep_strengths(name, direction, layers, gain)
                reached = last.refusal >= cfg.target_refusal
                if not reached or last.ppl_ratio <= cfg.max_ppl_ratio:
                    break  # out of reach for lower gains, or met: a lower gain needs more strength
    return _best(search.tried, cfg), search.tried, search.base_ppl


def _best(tried: list[TuneResult], cfg: CalibrationConfig) -> TuneResult:
    """The most fluent setting meeting both limits; else the most refusing of the fluent ones."""
    ok = [t for t in tried if t.refusal >= cfg.target_refusal and t.ppl_ratio <= cfg.max_ppl_ratio]
    if ok:
        return min(ok, key=lambda t: (t.ppl_ratio, t.strength * len(t.layers)))
    fluent = [t for t in tried if t.ppl_ratio <= cfg.max_ppl_ratio] or tried
    return max(fluent, key=lambda t: (t.refusal, -t.strength))

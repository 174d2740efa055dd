"""The probe's judgement of one request, shared by the CLI, both services and the light client.

Light at import (no torch): ``steerguard.client`` hands these to callers.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from steerguard.bundle import Bundle
    from steerguard.v1 import common_pb2


@dataclass(frozen=True)
class Verdict:
    score: float
    unsafe: bool
    category: str  # empty when safe
    category_scores: dict[str, float] = field(default_factory=dict)
    threshold: float = 0.5
    bundle_id: str = ""
    cached: bool = False
    # Set per request, never cached (steerguard.language): the request's language, and
    # whether the bundle was calibrated for it.
    language: str = ""
    language_calibrated: bool = True
    # Judged safe by the bundle's early-exit probe (manifest.cascade); score is that probe's.
    cascade_exit: bool = False
    # The category head is unsure of ``category`` (Bundle.category_unsure_below): a policy's
    # default rule applies, not the category's.
    category_unsure: bool = False

    @classmethod
    def cascade_exit_of(cls, score: float, bundle: Bundle) -> Verdict:
        """The verdict of a view that left at the cascade's layer: safe, no category scores."""
        return cls(score, False, "", {}, bundle.threshold, bundle.bundle_id, cascade_exit=True)

    @property
    def hazard(self) -> str:
        """The category's MLCommons hazard code (steerguard.taxonomy); "" when safe."""
        from steerguard.taxonomy import hazard_of

        return hazard_of(self.category) if self.unsafe else ""

    def as_dict(self) -> dict[str, Any]:
        """What the cache stores: the hazard is derived from the category, so not stored."""
        return {
            "score": self.score,
            "unsafe": self.unsafe,
            "category": self.category or None,
            "category_scores": dict(self.category_scores),
            "threshold": self.threshold,
            "bundle_id": self.bundle_id,
            "cascade_exit": self.cascade_exit,
            "category_unsure": self.category_unsure,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Verdict:
        return cls(
            score=float(data["score"]),
            unsafe=bool(data["unsafe"]),
            category=str(data.get("category") or ""),
            category_scores={str(k): float(v) for k, v in dict(data.get("category_scores", {})).items()},
            threshold=float(data["threshold"]),
            bundle_id=str(data.get("bundle_id", "")),
            cascade_exit=bool(data.get("cascade_exit", False)),
            category_unsure=bool(data.get("category_unsure", False)),
        )

    def to_proto(self) -> common_pb2.Verdict:
        """As ``steerguard.v1.Verdict`` (both services answer with it)."""
        from steerguard.v1 import common_pb2

        return common_pb2.Verdict(
            score=self.score,
            unsafe=self.unsafe,
            category=self.category,
            category_scores=dict(self.category_scores),
            cached=self.cached,
            bundle_id=self.bundle_id,
            threshold=self.threshold,
            language=self.language,
            language_calibrated=self.language_calibrated,
            hazard=self.hazard,
            cascade_exit=self.cascade_exit,
            category_unsure=self.category_unsure,
        )

    @classmethod
    def from_proto(cls, v: common_pb2.Verdict) -> Verdict:
        """A ``steerguard.v1.Verdict`` as received over gRPC."""
        return cls(
            score=v.score,
            unsafe=v.unsafe,
            category=v.category,
            category_scores=dict(v.category_scores),
            threshold=v.threshold,
            bundle_id=v.bundle_id,
            cached=v.cached,
            language=v.language,
            language_calibrated=v.language_calibrated,
            cascade_exit=v.cascade_exit,
            category_unsure=v.category_unsure,
        )

    def at_threshold(self, threshold: float) -> Verdict:
        """The same scores judged at another threshold (per-request override)."""
        unsafe = self.score >= threshold
        top = max(self.category_scores, key=self.category_scores.__getitem__) if self.category_scores else ""
        return replace(self, threshold=threshold, unsafe=unsafe, category=top if unsafe else "")


def verdicts_from_states(
    bundle: Bundle, states: torch.Tensor, threshold: float | None = None, content: torch.Tensor | None = None
) -> list[Verdict]:
    """Score probe-layer last-token states ``[B, H]`` into one verdict per row.

    ``content``: the rows' mean probe-layer states over the last user turn;
    with a bundle that reads them (:attr:`Bundle.reads_content`), the
    categories come from its content head.
    """
    scores = bundle.score(states)
    if content is not None and bundle.reads_content:
        scores = replace(scores, categories=bundle.content_categories(content))
    cut = bundle.threshold if threshold is None else threshold
    cats, unsure_below = bundle.categories, bundle.category_unsure_below
    out = []
    for i in range(states.shape[0]):
        p = float(scores.unsafe[i])
        cat_scores = {c: float(scores.categories[i, j]) for j, c in enumerate(cats)}
        unsafe = p >= cut
        top = max(cat_scores, key=cat_scores.__getitem__) if cat_scores else ""
        unsure = bool(cat_scores) and cat_scores[top] < unsure_below
        out.append(
            Verdict(
                p, unsafe, top if unsafe else "", cat_scores, cut, bundle.bundle_id, category_unsure=unsure
            )
        )
    return out

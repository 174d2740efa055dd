"""The held-out prompts an evaluation scores: calibration's own splits, rebuilt from the bundle's record.

Held-out means the :mod:`steerguard.data.loaders` ``heldout`` split, rebuilt
with the seed and sample sizes recorded in the bundle, so no prompt used in
calibration is scored here (XSTest: only the types not used in calibration).
Any data file whose hash differs from calibration's is reported.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from steerguard.bundle import Bundle
from steerguard.calibration.config import CalibrationConfig
from steerguard.data.loaders import HELDOUT, Dataset, Example
from steerguard.evaluation.config import EvalConfig
from steerguard.model.chat import Conversation, normalise_request


def subsample(items: list[Example], n: int | None, seed: int) -> list[Example]:
    if n is None or len(items) <= n:
        return items
    rng = random.Random(seed)
    return sorted(rng.sample(items, n), key=items.index)


def reload_dataset(bundle: Bundle, data_dir: str | Path) -> tuple[Dataset, list[str]]:
    """The splits calibration used (seed and sizes from the manifest) and any hash mismatches."""
    record = bundle.manifest.calibration.config if bundle.manifest.calibration is not None else {}
    data = CalibrationConfig.from_record(record).load_data(data_dir)
    recorded = {s.path: s.sha256 for s in bundle.manifest.data_sources}
    warnings = [
        f"{s.path}: hash differs from calibration's (splits may overlap)"
        for s in data.sources
        if s.path in recorded and recorded[s.path] != s.sha256
    ]
    return data, warnings


@dataclass
class HeldOut:
    """Held-out harmful, benign and XSTest prompts, in one row order with their labels and masks."""

    data: Dataset
    warnings: list[str]
    harmful: list[Example]
    benign: list[Example]
    xstest: list[Example]

    @property
    def items(self) -> list[Example]:
        return self.harmful + self.benign + self.xstest

    @property
    def prompts(self) -> list[str]:
        return [e.prompt for e in self.items]

    @property
    def convs(self) -> list[Conversation]:
        return [normalise_request(p) for p in self.prompts]

    @property
    def labels(self) -> np.ndarray:
        return np.array([e.label for e in self.items])

    @property
    def is_hb(self) -> np.ndarray:
        """Rows of the ordinary harmful-vs-benign set (the rest are XSTest's)."""
        return np.array([e.kind in ("harmful", "benign") for e in self.items])

    @property
    def xs_safe(self) -> np.ndarray:
        idx = np.where(~self.is_hb)[0]
        return idx[self.labels[idx] == 0]

    @property
    def xs_unsafe(self) -> np.ndarray:
        idx = np.where(~self.is_hb)[0]
        return idx[self.labels[idx] == 1]


def load_heldout(bundle: Bundle, data_dir: str | Path, cfg: EvalConfig) -> HeldOut:
    data, warnings = reload_dataset(bundle, data_dir)
    held = data.select(HELDOUT)
    harmful = subsample([e for e in held if e.kind == "harmful"], cfg.max_heldout, cfg.seed)
    benign = subsample([e for e in held if e.kind == "benign"], cfg.max_heldout, cfg.seed + 1)
    xs = [e for e in held if e.kind in ("xstest_safe", "xstest_unsafe")]
    if cfg.max_heldout is not None:
        xs = subsample(xs, cfg.max_heldout, cfg.seed + 2)
    return HeldOut(data, warnings, harmful, benign, xs)

"""Labelled prompts as every layer sees them: :class:`Example`, splits, labels, the category taxonomy.

A module of its own so the loaders and the built-in prompts
(:mod:`steerguard.data.borderline`) share these types without importing
each other.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

CALIBRATION = "calibration"
HELDOUT = "heldout"
POOL = "pool"  # benign prompts kept aside for hard-negative mining (never evaluated on)
HARMFUL = 1
BENIGN = 0

# XSTest families (a safe type and its unsafe contrast) used for calibration.
# Chosen before looking at any result, and never tuned: the other families
# (safe_contexts, definitions, discrimination, historical_events) are held out.
XSTEST_TRAIN_TYPES = frozenset(
    {
        "homonyms",
        "contrast_homonyms",
        "figurative_language",
        "contrast_figurative_language",
        "safe_targets",
        "contrast_safe_targets",
        "privacy_public",
        "privacy_fictional",
        "contrast_privacy",
    }
)

# Source category names (lower-cased) -> shared taxonomy.
CATEGORY_MAP = {
    "chemical_biological": "chemical_biological",
    "cybercrime_intrusion": "cybercrime",
    "illegal": "illegal",
    "illegal goods and services": "illegal",
    "non-violent crimes": "illegal",
    "misinformation_disinformation": "misinformation",
    "disinformation and deception": "misinformation",
    "harassment_bullying": "harassment",
    "hate, harassment and discrimination": "harassment",
    "harmful": "violence",
    "violence": "violence",
    "sexual content": "sexual",
    "copyright": "copyright",
}


def canonical_category(name: str | None) -> str | None:
    """Map a source's category onto the shared taxonomy (``None`` stays ``None``)."""
    if name is None:
        return None
    text = str(name).strip()
    if not text or text.lower() in {"none", "null", "nan"}:
        return None
    key = text.lower()
    if key in CATEGORY_MAP:
        return CATEGORY_MAP[key]
    return re.sub(r"[^a-z0-9]+", "_", key).strip("_") or None


def normalise_text(text: str) -> str:
    """Key used to find the same prompt in two data sets."""
    return re.sub(r"\s+", " ", text).strip().lower()


def text_hash(text: str) -> int:
    return int(hashlib.sha256(normalise_text(text).encode("utf-8")).hexdigest()[:12], 16)


@dataclass(frozen=True)
class Example:
    """One labelled prompt.

    ``kind``: harmful, benign, borderline (benign that looks alarming),
    xstest_safe or xstest_unsafe; ``group``: the XSTest type, if any.
    """

    prompt: str
    label: int
    source: str
    split: str
    kind: str
    category: str | None = None
    group: str | None = None
    origin: str = ""  # the SourceFile.path this came from

    @property
    def key(self) -> str:
        return normalise_text(self.prompt)


@dataclass
class SourceFile:
    path: str
    sha256: str
    rows: int
    used: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "sha256": self.sha256, "rows": self.rows, "used": self.used}


@dataclass
class Dataset:
    """All examples from a data directory plus the provenance of each file."""

    examples: list[Example]
    sources: list[SourceFile] = field(default_factory=list)
    root: str = ""
    # Benign prompts used neither for calibration nor for evaluation: the
    # hard-negative mining pool. No prompt here appears in ``examples``.
    pool: list[Example] = field(default_factory=list)

    def select(self, split: str | None = None, kinds: Iterable[str] | None = None) -> list[Example]:
        wanted = set(kinds) if kinds is not None else None
        return [
            e
            for e in self.examples
            if (split is None or e.split == split) and (wanted is None or e.kind in wanted)
        ]

    def summary(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for e in self.examples:
            out.setdefault(e.split, {}).setdefault(e.kind, 0)
            out[e.split][e.kind] += 1
        return out

"""Labelled safety prompts: loaders for the public data sets, splits, and source hashes.

Why a module of its own: calibration and evaluation must agree on *which*
prompt is used for what. Every prompt gets one split here, deterministically
(seeded sampling and text hashes, never file order), and a prompt that is in
the calibration split is removed from the held-out split even when it comes
from another data set (the refusal-direction harmful set contains HarmBench
behaviours, for instance). The evaluation's "prompts not used in
calibration" rests on this.

Formats read from a directory (``--data DIR``), searched recursively:

- HarmBench CSV (``Behavior``, ``SemanticCategory``, ``FunctionalCategory``,
  ``ContextString``): ``*val*`` files calibrate, the others are held out.
  Contextual behaviours are prompted as context, separator, behaviour (as
  HarmBench does). ``copyright`` behaviours are left out by default: they ask
  for song lyrics or book passages, an IP policy rather than a safety one, and
  look like benign requests to any activation probe.
- StrongREJECT CSV (``forbidden_prompt``, ``category``): half calibrates,
  half is held out (by text hash).
- refusal_direction JSON lists ``{instruction, category}``: ``harmful_*``
  calibrate; ``harmless_train`` is a pool of Alpaca prompts sampled for
  calibration and ``harmless_val`` a pool sampled for evaluation. What the
  calibration sample leaves of ``harmless_train`` is the *mining pool*
  (:attr:`Dataset.pool`, see :mod:`steerguard.calibration.mining`).
- XSTest CSV (``prompt``, ``type``, ``label``): split by prompt *type*
  (:data:`XSTEST_TRAIN_TYPES` calibrate, every other type is held out), so
  the over-refusal numbers are measured on kinds of prompts never trained on.
- Plain JSONL ``{"prompt", "label": "harmful"|"benign", "category"?,
  "split"?: "calibration"|"heldout"|"pool"}``: without ``split``, 80/20 by
  text hash; ``pool`` puts a benign prompt in the mining pool (for example a
  sample of a deployment's own ordinary traffic).

Built in (:mod:`steerguard.data.borderline`): borderline-safe prompts (benign
requests that use violent or alarming words) and short, blunt harmful
requests. They are the over-refusal fix: without them a probe separates
"Alpaca-like" from "AdvBench-like" text rather than benign from harmful.

Categories from different sources are mapped onto one taxonomy
(:data:`CATEGORY_MAP`); unknown names pass through as slugs.
"""

from __future__ import annotations

import csv
import hashlib
import json
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from steerguard.data import borderline
from steerguard.data.examples import (
    BENIGN,
    CALIBRATION,
    CATEGORY_MAP,
    HARMFUL,
    HELDOUT,
    POOL,
    XSTEST_TRAIN_TYPES,
    Dataset,
    Example,
    SourceFile,
    canonical_category,
    normalise_text,
    text_hash,
)
from steerguard.errors import DataError

__all__ = [
    "BENIGN",
    "CALIBRATION",
    "CATEGORY_MAP",
    "HARMFUL",
    "HELDOUT",
    "POOL",
    "SPLITS",
    "XSTEST_TRAIN_TYPES",
    "Dataset",
    "Example",
    "SourceFile",
    "canonical_category",
    "load_dir",
    "normalise_text",
    "text_hash",
]


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- readers -----------------------------------------------------------------


def _read_csv(path: Path) -> list[dict[str, str]]:
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            return list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: cannot read CSV: {exc}") from exc


def _hash_split(text: str, heldout_fraction: float, salt: str) -> str:
    h = int(hashlib.sha256((salt + normalise_text(text)).encode()).hexdigest()[:8], 16)
    return HELDOUT if (h % 10_000) < heldout_fraction * 10_000 else CALIBRATION


def read_harmbench(path: Path, *, include_copyright: bool = False) -> list[Example]:
    rows = _read_csv(path)
    if rows and "Behavior" not in rows[0]:
        raise DataError(f"{path}: not a HarmBench CSV (no Behavior column)")
    split = CALIBRATION if "val" in path.stem.lower() else HELDOUT
    out = []
    for r in rows:
        functional = (r.get("FunctionalCategory") or "").strip()
        semantic = r.get("SemanticCategory")
        if not include_copyright and (functional == "copyright" or semantic == "copyright"):
            continue
        behavior = (r.get("Behavior") or "").strip()
        if not behavior:
            continue
        context = (r.get("ContextString") or "").strip()
        prompt = f"{context}\n\n---\n\n{behavior}" if functional == "contextual" and context else behavior
        out.append(
            Example(prompt, HARMFUL, f"harmbench:{path.stem}", split, "harmful", canonical_category(semantic))
        )
    return out


def read_strongreject(path: Path, heldout_fraction: float = 0.5) -> list[Example]:
    rows = _read_csv(path)
    if rows and "forbidden_prompt" not in rows[0]:
        raise DataError(f"{path}: not a StrongREJECT CSV (no forbidden_prompt column)")
    out = []
    for r in rows:
        text = (r.get("forbidden_prompt") or "").strip()
        if text:
            split = _hash_split(text, heldout_fraction, "strongreject")
            out.append(
                Example(
                    text, HARMFUL, "strongreject", split, "harmful", canonical_category(r.get("category"))
                )
            )
    return out


def read_xstest(path: Path, train_types: frozenset[str] = XSTEST_TRAIN_TYPES) -> list[Example]:
    rows = _read_csv(path)
    if rows and not {"prompt", "type", "label"} <= set(rows[0]):
        raise DataError(f"{path}: not an XSTest CSV (needs prompt, type, label)")
    out = []
    for r in rows:
        text, kind_type, label = (
            (r.get("prompt") or "").strip(),
            r["type"].strip(),
            r["label"].strip().lower(),
        )
        if not text:
            continue
        unsafe = label == "unsafe"
        split = CALIBRATION if kind_type in train_types else HELDOUT
        out.append(
            Example(
                text,
                HARMFUL if unsafe else BENIGN,
                "xstest",
                split,
                "xstest_unsafe" if unsafe else "xstest_safe",
                None,
                kind_type,
            )
        )
    return out


def read_refusal_direction(path: Path) -> list[Example]:
    try:
        items = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read JSON: {exc}") from exc
    if not isinstance(items, list):
        raise DataError(f"{path}: expected a JSON list of {{instruction, category}}")
    harmful = path.stem.startswith("harmful")
    # harmless_train is the calibration pool, harmless_val the evaluation pool.
    split = CALIBRATION if harmful or "train" in path.stem else HELDOUT
    out = []
    for i, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get("instruction"), str):
            raise DataError(f"{path}: item {i} has no instruction")
        text = item["instruction"].strip()
        if not text:
            continue
        out.append(
            Example(
                text,
                HARMFUL if harmful else BENIGN,
                f"refusal_direction:{path.stem}",
                split,
                "harmful" if harmful else "benign",
                canonical_category(item.get("category")) if harmful else None,
            )
        )
    return out


def read_plain_jsonl(path: Path, heldout_fraction: float = 0.2) -> list[Example]:
    """``{"prompt", "label": "harmful"|"benign", "category"?, "split"?}`` per line."""
    from steerguard.jsonl import read_jsonl

    out = []
    for lineno, obj in read_jsonl(path):
        prompt = obj.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise DataError(f"{path}:{lineno}: needs a non-empty string 'prompt'")
        label = str(obj.get("label", "")).strip().lower()
        if label not in {"harmful", "benign"}:
            raise DataError(f"{path}:{lineno}: label must be 'harmful' or 'benign', got {obj.get('label')!r}")
        split = obj.get("split")
        harmful = label == "harmful"
        if split is None:
            split = _hash_split(prompt, heldout_fraction, "jsonl")
        elif split not in {CALIBRATION, HELDOUT, POOL}:
            raise DataError(f"{path}:{lineno}: split must be '{CALIBRATION}', '{HELDOUT}' or '{POOL}'")
        elif split == POOL and harmful:
            raise DataError(f"{path}:{lineno}: the '{POOL}' split holds benign prompts only")
        kind = str(obj.get("kind") or ("harmful" if harmful else "benign"))
        out.append(
            Example(
                prompt.strip(),
                HARMFUL if harmful else BENIGN,
                f"jsonl:{path.stem}",
                split,
                kind,
                canonical_category(obj.get("category")) if harmful else None,
            )
        )
    return out


def _sample(examples: list[Example], n: int | None, seed: int) -> tuple[list[Example], list[Example]]:
    """A seeded sample of ``n`` examples and the rest (in file order)."""
    if n is None or n >= len(examples):
        return examples, []
    picked = random.Random(seed).sample(range(len(examples)), n)  # the same draw as sampling the list
    chosen = set(picked)
    return [examples[i] for i in picked], [e for i, e in enumerate(examples) if i not in chosen]


@dataclass(frozen=True)
class SplitDefaults:
    """How many benign prompts each split samples, and what else is read: the data layer's defaults.

    :class:`steerguard.calibration.config.CalibrationConfig` takes its own
    defaults for these settings from here.
    """

    seed: int = 0
    benign_calibration: int = 1000
    benign_heldout: int = 400
    include_copyright: bool = False
    builtin: bool = True


SPLITS = SplitDefaults()


def load_dir(
    root: str | Path,
    *,
    seed: int = SPLITS.seed,
    benign_calibration: int = SPLITS.benign_calibration,
    benign_heldout: int = SPLITS.benign_heldout,
    include_copyright: bool = SPLITS.include_copyright,
    builtin: bool = SPLITS.builtin,
) -> Dataset:
    """Read every known file under ``root`` and assign splits (see module docstring)."""
    folder = Path(root)
    if not folder.is_dir():
        raise DataError(f"data directory {folder} does not exist")
    examples: list[Example] = []
    pool: list[Example] = []
    sources: list[SourceFile] = []
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in {".csv", ".json", ".jsonl"})
    for path in files:
        rel = str(path.relative_to(folder))
        name = path.name.lower()
        if path.suffix == ".csv":
            header = _read_csv(path)[:1]
            cols = set(header[0]) if header else set()
            if "Behavior" in cols:
                found = read_harmbench(path, include_copyright=include_copyright)
            elif "forbidden_prompt" in cols:
                found = read_strongreject(path)
            elif {"prompt", "type", "label"} <= cols:
                found = read_xstest(path)
            else:
                continue
        elif path.suffix == ".json" and (name.startswith("harmful") or name.startswith("harmless")):
            found = read_refusal_direction(path)
            if name.startswith("harmless"):
                calibration_pool = "train" in name
                found, rest = _sample(
                    found,
                    benign_calibration if calibration_pool else benign_heldout,
                    seed + (0 if calibration_pool else 1),
                )
                if calibration_pool:
                    pool.extend(replace(e, split=POOL, origin=rel) for e in rest)
        elif path.suffix == ".jsonl":
            found = read_plain_jsonl(path)
            pool.extend(replace(e, origin=rel) for e in found if e.split == POOL)
            found = [e for e in found if e.split != POOL]
        else:
            continue
        sources.append(SourceFile(rel, file_sha256(path), len(found)))
        examples.extend(replace(e, origin=rel) for e in found)
    if builtin:
        extra = borderline.examples()
        # The recorded name predates the data package; kept so bundles compare source for source.
        origin = "builtin:steerguard/borderline.py"
        sources.append(SourceFile(origin, borderline.content_hash(), len(extra)))
        examples.extend(replace(e, origin=origin) for e in extra)
    if not examples:
        raise DataError(f"no labelled prompts found under {folder}")
    examples, counts = _deduplicate(examples)
    for s in sources:
        s.used = counts.get(s.path, 0)
    return Dataset(examples, sources, str(folder), _pool(pool, {e.key for e in examples}))


def _pool(candidates: Sequence[Example], taken: set[str]) -> list[Example]:
    """One copy per text, none that calibration or evaluation uses (so mining never touches either)."""
    out: list[Example] = []
    seen = set(taken)
    for e in candidates:
        if e.key not in seen:
            seen.add(e.key)
            out.append(e)
    return out


def _deduplicate(examples: Sequence[Example]) -> tuple[list[Example], dict[str, int]]:
    """One copy per prompt text; anything in calibration is dropped from held-out."""
    calib_keys = {e.key for e in examples if e.split == CALIBRATION}
    seen: set[tuple[str, str]] = set()
    out: list[Example] = []
    for e in examples:
        if e.split == HELDOUT and e.key in calib_keys:
            continue
        tag = (e.split, e.key)
        if tag in seen:
            continue
        seen.add(tag)
        out.append(e)
    counts: dict[str, int] = {}
    for e in out:
        counts[e.origin] = counts.get(e.origin, 0) + 1
    return out, counts


def with_split(examples: Iterable[Example], split: str) -> list[Example]:
    return [replace(e, split=split) for e in examples]

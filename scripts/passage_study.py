"""Compare passage-probe settings on calibration documents only (layers, C, document budget).

Why: held out, the passage probe caught 23/30 requests at the end of a long
prose document and 25/30 inside one (target 27). Its layer (10), strength
and cut budget (2% of 3k-token benign documents) were chosen on calibration
documents that mix request lists with prose. This script rebuilds exactly
the documents calibration's step 3b builds (same split, seed and settings),
reads their segment ends once at layers 6, 8, 10 and 13, and reports for
each feature set (one layer, or several side by side), C, cut rule and
budget the out-of-fold catch per document kind (prose with the request at
the end, prose with it inside, request lists) and how many benign documents
of each kind are flagged. Held-out prompts are never read.

    python scripts/passage_study.py steerguard/bundles/default /tmp/passage-study --data ../shared/data
    python scripts/passage_study.py steerguard/bundles/default /tmp/passage-study --analyse \
        [--features 10 6+8+10] [--cs 0.01 0.03] [--benign-fraction 1.0]
    python scripts/passage_study.py steerguard/bundles/default /tmp/passage-study \
        --write BUNDLE_OUT --layers 6 8 10 --c 0.03 --budget 0.02

The first run writes the rows (``rows.npz``, ~3 GB, ~35 min on 2 cores);
``--analyse`` reads them again and prints a table (by default each fold is
fitted on a quarter of the benign rows, minutes instead of an hour; the
2026-12-05 choice was confirmed with ``--benign-fraction 1.0``, as
docs/calibration.md says); ``--write`` fits the passage probe on all saved
rows under those settings (what calibration's step would fit, without
reading the documents again) and writes the bundle with it.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

LAYERS = (6, 8, 10, 13)
KINDS = ("prose_end", "prose_inside", "list")


def _kind(doc: Any) -> str:
    if doc.group >= 0:
        return "list"
    if doc.request is not None:
        return "prose_end" if doc.text.rstrip().endswith(doc.request) else "prose_inside"
    return "prose_ordinary" if doc.ordinary else "prose_hard"


def read(args: argparse.Namespace) -> None:
    from steerguard.bundle import Bundle
    from steerguard.calibration import passages
    from steerguard.calibration.config import CalibrationConfig
    from steerguard.calibration.pipeline import _load, passage_documents

    bundle = Bundle.load(args.bundle)
    assert bundle.manifest.calibration is not None
    cfg = replace(CalibrationConfig.from_record(dict(bundle.manifest.calibration.config)), progress=True)
    run = _load(args.data, None, None, cfg, None)
    docs = passage_documents(run)
    rows = passages.read_rows(run.host, docs, LAYERS, cfg)
    kinds = {d.group: _kind(d) for d in docs}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    np.savez(
        out / "rows.npz",
        labels=rows.labels,
        docs=rows.docs,
        folds=rows.folds,
        **{f"layer{k}": v for k, v in rows.states.items()},
    )
    (out / "meta.json").write_text(json.dumps({"kinds": kinds, "tokens": rows.tokens}))


def _flagged_docs(
    scores: np.ndarray, docs: np.ndarray, labels: np.ndarray, groups: list[int], cut: float
) -> int:
    return sum(int(scores[(docs == g) & (labels == 0)].max(initial=-1.0) >= cut) for g in groups)


# Feature sets the table compares: one layer, or segment states of several
# layers side by side (layers below the passage layer cost nothing extra).
FEATURES = ((10,), (13,), (8, 10), (6, 8, 10))


def _features(z: Any, layers: tuple[int, ...]) -> np.ndarray:
    return np.concatenate([z[f"layer{layer}"] for layer in layers], axis=1)


def _oof(x: np.ndarray, labels: np.ndarray, folds: np.ndarray, c: float, fraction: float) -> np.ndarray:
    """Grouped out-of-fold scores, each fold's head fitted on its harmful rows and ``fraction`` of
    its benign ones (seeded; the classes are weighted to balance either way), so a table of many
    settings fits in minutes. ``--write`` fits on every row, as calibration does."""
    from steerguard.calibration.config import FIT
    from steerguard.calibration.heads import fit_head

    keep = (labels == 1) | (np.random.default_rng(0).random(len(labels)) < fraction)
    out = np.zeros(len(labels))
    for f in range(FIT.folds):
        test, train = folds == f, (folds != f) & keep
        out[test] = fit_head(x[train], labels[train], c).predict(x[test])
    return out


def analyse(args: argparse.Namespace) -> None:
    """Catch per document kind and benign documents flagged, per feature set, C, cut rule and budget.

    The cut is set on ordinary benign documents of both kinds pooled to 3k
    tokens (calibration's rule, ``all``) or on the prose ones alone (``prose``).
    """
    from steerguard.calibration.passages import PassageRows, document_cut

    out = Path(args.out)
    z = np.load(out / "rows.npz")
    meta = json.loads((out / "meta.json").read_text())
    kinds = {int(g): k for g, k in meta["kinds"].items()}
    tokens = {int(g): n for g, n in meta["tokens"].items()}
    labels, docs = z["labels"], z["docs"]
    row_kind = np.array([kinds[int(g)] for g in docs])
    harmful_docs = set(docs[labels == 1].tolist())
    benign_groups = {k: [g for g, kk in kinds.items() if kk == k] for k in ("prose_ordinary", "prose_hard")}
    benign_groups["list"] = [g for g, k in kinds.items() if k == "list" and g not in harmful_docs]
    sizes = {k: len(g) for k, g in benign_groups.items()}
    prose_tokens = {g: tokens[g] for g in benign_groups["prose_ordinary"]}
    rules = {
        "all": PassageRows({}, labels, docs, tokens, z["folds"]),
        "prose": PassageRows({}, labels, docs, prose_tokens, z["folds"]),
    }
    for layers in [tuple(int(k) for k in f.split("+")) for f in args.features]:
        x = _features(z, layers)
        for c in args.cs:
            oof = _oof(x, labels, z["folds"], c, args.benign_fraction)
            for rule, rows in rules.items():
                for budget in (0.02, 0.03, 0.04):
                    cut = document_cut(oof, rows, 3000, budget)
                    caught = {k: float((oof[(labels == 1) & (row_kind == k)] >= cut).mean()) for k in KINDS}
                    flagged = {k: _flagged_docs(oof, docs, labels, g, cut) for k, g in benign_groups.items()}
                    print(
                        f"layers {'+'.join(map(str, layers))} C {c} cut-on {rule} budget {budget}: "
                        f"cut {cut:.4f} "
                        + " ".join(f"{k} {v:.3f}" for k, v in caught.items())
                        + " | benign flagged "
                        + " ".join(f"{k} {flagged[k]}/{sizes[k]}" for k in flagged),
                        flush=True,
                    )


def write(args: argparse.Namespace) -> None:
    """The bundle with its passage probe refitted on the saved rows at ``--layers``, ``--c``, ``--budget``.

    The deepest of ``--layers`` is the passage layer; the others are read beside it.
    """
    import time

    from steerguard.bundle import Bundle
    from steerguard.calibration.config import CalibrationConfig
    from steerguard.calibration.passages import PassageRows, fit_passage_probe
    from steerguard.manifest import CalibrationRecord

    bundle = Bundle.load(args.bundle)
    record = bundle.manifest.calibration or CalibrationRecord()
    layers = sorted(args.layers)
    n = bundle.model["num_layers"]
    depth = {k: round((k + 0.5) / n, 4) for k in layers}  # int(depth * n) == layer
    cfg = replace(
        CalibrationConfig.from_record(dict(record.config)),
        passage_depths=(depth[layers[-1]],),
        passage_feature_depths=tuple(depth[k] for k in layers[:-1]),
        passage_c=args.c,
        passage_max_document_flagged=args.budget,
    )
    out = Path(args.out)
    z = np.load(out / "rows.npz")
    meta = json.loads((out / "meta.json").read_text())
    tokens = {int(g): n for g, n in meta["tokens"].items()}
    states = {k: z[f"layer{k}"] for k in layers}
    rows = PassageRows(states, z["labels"], z["docs"], tokens, z["folds"])
    start = time.time()
    info, tensors = fit_passage_probe(rows, cfg, bundle.threshold, extra=layers[:-1])
    timings = {**record.timings_s, "passage_fit_s": round(time.time() - start, 1)}
    manifest = replace(
        bundle.manifest,
        passage=info,
        calibration=CalibrationRecord(config=cfg.record(), timings_s=timings),
        bundle_id="",
    )
    print(Bundle(manifest, {**bundle.tensors, **tensors}).save(args.write))


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").strip().splitlines()[0])
    parser.add_argument("bundle")
    parser.add_argument("out")
    parser.add_argument("--data", default="../shared/data")
    parser.add_argument("--analyse", action="store_true", help="read the saved rows and print the table")
    parser.add_argument("--write", default="", help="fit on the saved rows and write the bundle here")
    parser.add_argument("--layers", type=int, nargs="+", default=[10], help="--write: deepest = layer")
    parser.add_argument("--c", type=float, default=0.01)
    parser.add_argument("--budget", type=float, default=0.02)
    parser.add_argument("--benign-fraction", type=float, default=0.25, help="--analyse: benign rows fitted")
    parser.add_argument(
        "--features", nargs="+", default=["+".join(map(str, f)) for f in FEATURES], help="e.g. 8+10"
    )
    parser.add_argument("--cs", type=float, nargs="+", default=[0.01, 0.03], help="strengths --analyse tries")
    args = parser.parse_args()
    if args.write:
        write(args)
    elif args.analyse:
        analyse(args)
    else:
        read(args)


if __name__ == "__main__":
    main()

"""Compare passage-probe settings on calibration documents only (layers, C, document budget).

Why: held out, the passage probe caught 23/30 requests at the end of a long
prose document and 25/30 inside one (target 27). Its layer (10), strength
and cut budget (2% of 3k-token benign documents) were chosen on calibration
documents that mix request lists with prose. This script rebuilds exactly
the documents calibration's step 3b builds (same split, seed and settings),
reads their segment ends once at several layers, and reports for each
setting the out-of-fold catch per document kind (prose with the request at
the end, prose with it inside, request lists) and how many benign documents
of each kind are flagged. Held-out prompts are never read.

    python scripts/passage_study.py steerguard/bundles/default /tmp/passage-study --data ../shared/data
    python scripts/passage_study.py steerguard/bundles/default /tmp/passage-study --analyse

The first run writes the rows (``rows.npz``, ~40 min on 2 cores); ``--analyse``
reads them again and prints a table; ``--write BUNDLE_OUT --layer L --c C
--budget B`` fits the passage probe on the saved rows under those settings
(exactly what ``scripts/refit_passage.py`` would fit, without reading the
documents again) and writes the bundle with it.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

LAYERS = (10, 13, 16)
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


def analyse(args: argparse.Namespace) -> None:
    from steerguard.calibration.heads import grouped_oof
    from steerguard.calibration.passages import PassageRows, document_cut

    out = Path(args.out)
    z = np.load(out / "rows.npz")
    meta = json.loads((out / "meta.json").read_text())
    kinds = {int(g): k for g, k in meta["kinds"].items()}
    tokens = {int(g): n for g, n in meta["tokens"].items()}
    labels, docs = z["labels"], z["docs"]
    row_kind = np.array([kinds[int(g)] for g in docs])
    benign_groups = {k: [g for g, kk in kinds.items() if kk == k] for k in ("prose_ordinary", "prose_hard")}
    for layer in LAYERS:
        x = z[f"layer{layer}"]
        for c in (0.01, 0.03):
            oof = grouped_oof(x, labels, z["folds"], c)
            rows = PassageRows({}, labels, docs, tokens, z["folds"])
            for budget in (0.02, 0.03, 0.04):
                cut = document_cut(oof, rows, 3000, budget)
                caught = {k: float((oof[(labels == 1) & (row_kind == k)] >= cut).mean()) for k in KINDS}
                flagged = {k: _flagged_docs(oof, docs, labels, g, cut) for k, g in benign_groups.items()}
                sizes = {k: len(g) for k, g in benign_groups.items()}
                print(
                    f"layer {layer} C {c} budget {budget}: cut {cut:.4f} "
                    + " ".join(f"{k} {v:.3f}" for k, v in caught.items())
                    + " | benign prose flagged "
                    + " ".join(f"{k} {flagged[k]}/{sizes[k]}" for k in flagged),
                    flush=True,
                )


def write(args: argparse.Namespace) -> None:
    """The bundle with its passage probe refitted on the saved rows at ``--layer``, ``--c``, ``--budget``."""
    import time

    from steerguard.bundle import Bundle
    from steerguard.calibration.config import CalibrationConfig
    from steerguard.calibration.passages import PassageRows, fit_passage_probe
    from steerguard.manifest import CalibrationRecord

    bundle = Bundle.load(args.bundle)
    record = bundle.manifest.calibration or CalibrationRecord()
    depth = round((args.layer + 0.5) / bundle.model["num_layers"], 4)  # int(depth * n) == layer
    cfg = replace(
        CalibrationConfig.from_record(dict(record.config)),
        passage_depths=(depth,),
        passage_c=args.c,
        passage_max_document_flagged=args.budget,
    )
    out = Path(args.out)
    z = np.load(out / "rows.npz")
    meta = json.loads((out / "meta.json").read_text())
    tokens = {int(g): n for g, n in meta["tokens"].items()}
    rows = PassageRows({args.layer: z[f"layer{args.layer}"]}, z["labels"], z["docs"], tokens, z["folds"])
    start = time.time()
    info, tensors = fit_passage_probe(rows, cfg, bundle.threshold)
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
    parser.add_argument("--layer", type=int, default=10)
    parser.add_argument("--c", type=float, default=0.01)
    parser.add_argument("--budget", type=float, default=0.02)
    args = parser.parse_args()
    if args.write:
        write(args)
    elif args.analyse:
        analyse(args)
    else:
        read(args)


if __name__ == "__main__":
    main()

"""What the bundle scripts share: a bundle in, a folder out, the data folder; one step re-run."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import fields, replace
from typing import Any

# A step's manifest fields and tensors.
StepResult = tuple[dict[str, Any], dict[str, Any]]


def parse(doc: str | None, sections: list[str] | None = None) -> argparse.Namespace:
    """``BUNDLE OUT [--data DIR] [--section NAME]``, described by the script docstring's first line."""
    parser = argparse.ArgumentParser(description=(doc or "").strip().splitlines()[0])
    parser.add_argument("bundle", help="the bundle folder to start from")
    parser.add_argument("out", help="the folder to write to")
    parser.add_argument("--data", default="../shared/data", help="the shared data folder")
    if sections:
        parser.add_argument("--section", required=True, choices=sections, help="the section to run")
        parser.add_argument("--shapes", nargs="*", default=[], help="shapes: only these conversation shapes")
    return parser.parse_args()


def rerun_step(
    doc: str | None,
    prefix: str,
    timing: str,
    step: Callable[[Any, Any, Any], StepResult],
    settings: dict[str, Any] | None = None,
    owns: tuple[str, ...] = (),
) -> None:
    """Run one calibration step alone on a bundle's calibration split; save the bundle it gives.

    The split is rebuilt from the bundle's recorded settings and seed; the
    settings named ``prefix*`` take today's defaults, then ``settings``
    (e.g. the switch that turns the step on). ``step(run, bundle, cfg)``
    returns the manifest fields it sets and the tensors it adds; the new
    bundle (new id) records those settings and the step's time as ``timing``.
    The bundle's tensors named ``owns*`` are the step's: they are dropped
    first, so a head the step no longer fits does not outlive it.
    """
    from steerguard.bundle import Bundle
    from steerguard.calibration.config import CalibrationConfig
    from steerguard.calibration.pipeline import _load
    from steerguard.manifest import CalibrationRecord

    args = parse(doc)
    bundle = Bundle.load(args.bundle)
    record = bundle.manifest.calibration or CalibrationRecord()
    today = CalibrationConfig()
    cfg = replace(
        CalibrationConfig.from_record(dict(record.config)),
        **{f.name: getattr(today, f.name) for f in fields(today) if f.name.startswith(prefix)},
        **(settings or {}),
    )
    run = _load(args.data, None, None, cfg, None)
    bundle.verify_model(run.host.identity)
    start = time.time()
    changes, tensors = step(run, bundle, cfg)
    timings = {**record.timings_s, timing: round(time.time() - start, 1)}
    manifest = replace(
        bundle.manifest,
        **changes,
        calibration=CalibrationRecord(config=cfg.record(), timings_s=timings),
        bundle_id="",
    )
    kept = {k: v for k, v in bundle.tensors.items() if not k.startswith(owns)}
    print(Bundle(manifest, {**kept, **tensors}).save(args.out))

"""Re-fit only the passage probe of a calibrated bundle; everything else is kept as it is.

Why: the passage probe is calibration's step 3b and the only part long texts
depend on. Re-running the whole calibration to change it costs hours on two
cores and re-draws nothing else; this runs step 3b alone, on the same
calibration split (rebuilt from the bundle's recorded settings and seed),
under today's ``passage_*`` defaults, and writes a new bundle (new id) whose
manifest records those settings and the step's time.

    python scripts/refit_passage.py steerguard/bundles/default /tmp/new-bundle --data ../shared/data
"""

from __future__ import annotations

import time
from dataclasses import fields, replace

import bundle_args  # scripts/, on the path when a script runs

from steerguard.bundle import Bundle
from steerguard.calibration.config import CalibrationConfig
from steerguard.calibration.pipeline import _load, passage_probe
from steerguard.manifest import CalibrationRecord


def main() -> None:
    args = bundle_args.parse(__doc__)
    bundle = Bundle.load(args.bundle)
    record = bundle.manifest.calibration or CalibrationRecord()
    today = CalibrationConfig()
    cfg = replace(
        CalibrationConfig.from_record(dict(record.config)),
        **{f.name: getattr(today, f.name) for f in fields(today) if f.name.startswith("passage_")},
    )
    run = _load(args.data, None, None, cfg, None)
    bundle.verify_model(run.host.identity)
    start = time.time()
    info, tensors = passage_probe(run, bundle.probe_layer, bundle.threshold)
    timings = {**record.timings_s, "passage_s": round(time.time() - start, 1)}
    manifest = replace(
        bundle.manifest,
        passage=info,
        calibration=CalibrationRecord(config=cfg.record(), timings_s=timings),
        bundle_id="",
    )
    fresh = Bundle(manifest, {**bundle.tensors, **tensors})
    print(fresh.save(args.out))


if __name__ == "__main__":
    main()

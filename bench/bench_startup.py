"""The classifier's time to SERVING: a new pod with and without a prepared cache, and a restart.

In Kubernetes the writable cache is an emptyDir that every new pod starts
without, so a start without the image's prepared cache converts the model
(SmolLM2's GGUF) and exports both graphs again. Each start here is
``steerguard serve classifier`` in a process of its own, timed from launch
to gRPC health SERVING, in one run:

- ``prepare``: ``--prepare-only`` into a folder (what the image's build runs);
- ``new pod, prepared cache``: an empty writable cache and
  ``STEERGUARD_PREPARED_CACHE_DIR`` at that folder;
- ``new pod, no prepared cache``: an empty writable cache alone;
- ``restart``: the cache the previous start wrote (a restarted container).

Also reported: what each start wrote into its writable cache (MiB).

    python bench/bench_startup.py [--tiny] [--out reports/bench/startup.json]
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from classifier_setup import load, served, served_bench_main  # noqa: E402  (bench/, on the path when a benchmark runs)

from steerguard.bundle import Bundle  # noqa: E402


def written_mib(folder: Path) -> float:
    """Bytes under ``folder`` in MiB (0 where it was never made)."""
    files = [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []
    return round(sum(p.stat().st_size for p in files) / 2**20, 1)


def timed_start(bundle: Bundle, model: str | None, env: dict[str, str]) -> float:
    """Seconds from launching a server to its SERVING (it stops right after)."""
    started = time.perf_counter()
    with served(bundle, model, 2, [], env):
        return round(time.perf_counter() - started, 2)


def prepare(bundle: Bundle, model: str | None, folder: Path) -> float:
    """Seconds ``--prepare-only`` takes to fill ``folder``."""
    argv = [sys.executable, "-m", "steerguard", "serve", "classifier", "--prepare-only", "--threads", "2"]
    argv += ["--model", model] if model is not None else []
    argv += ["--bundle", str(bundle.path)] if bundle.path is not None else []
    env = {**os.environ, "STEERGUARD_CACHE_DIR": str(folder)}
    started = time.perf_counter()
    subprocess.run(argv, cwd=REPO, env=env, check=True, capture_output=True, timeout=900)
    return round(time.perf_counter() - started, 2)


def measure(tiny: bool) -> dict[str, object]:
    host, bundle = load(tiny, passage_tokens=128)
    model = str(host.source) if tiny else None
    root = Path(tempfile.mkdtemp())
    base = {k: v for k, v in os.environ.items() if k != "STEERGUARD_PREPARED_CACHE_DIR"}
    seconds = {"prepare": prepare(bundle, model, root / "prepared")}
    starts = {
        "new pod, prepared cache": (root / "pod1", {"STEERGUARD_PREPARED_CACHE_DIR": str(root / "prepared")}),
        "new pod, no prepared cache": (root / "pod2", {}),
        "restart": (root / "pod2", {}),
    }
    written: dict[str, float] = {"prepare": written_mib(root / "prepared")}
    for name, (cache, extra) in starts.items():
        before = written_mib(cache)
        seconds[name] = timed_start(bundle, model, {**base, "STEERGUARD_CACHE_DIR": str(cache), **extra})
        written[name] = round(written_mib(cache) - before, 1)
    return {
        "seconds_to_serving": seconds,
        "written_mib": written,
        "model": "tiny" if tiny else "SmolLM2-135M-Instruct",
    }


if __name__ == "__main__":
    sys.exit(served_bench_main(__doc__, "reports/bench/startup.json", measure))

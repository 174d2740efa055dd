"""The classifier's resident memory, per backend, side by side in one run.

Each variant is ``steerguard serve classifier`` in a process of its own, as
deployed: its resident memory (``VmRSS``) once SERVING, after a short prompt
and after a 4k-token text (passages), and its peak (``VmHWM``). The compiled
backends export their graphs at a first start (a float32 copy of the model is
loaded for it), so ``auto`` is started twice on a graph cache of its own: cold
(the export's peak included), then warm (as a restarted container), and warm
without compiled passages and without the trunk's warm-up of input lengths.

    python bench/bench_memory.py [--tiny] [--out reports/bench/memory.json]
"""

from __future__ import annotations

import os
import random
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench_length import document  # noqa: E402  (bench/, on the path when a benchmark runs)
from classifier_setup import load, served, served_bench_main  # noqa: E402

from steerguard.bundle import Bundle  # noqa: E402
from steerguard.model.host import ModelHost  # noqa: E402
from steerguard.model.paths import cache_dir  # noqa: E402
from steerguard.v1 import classifier_pb2  # noqa: E402

# (name, flags, a graph cache of its own that starts empty)
VARIANTS = (
    ("torch", ["--backend", "torch"], False),
    ("auto, cold graph cache", [], True),
    ("auto, warm graph cache", [], False),
    ("auto, warm, --no-compiled-passages", ["--no-compiled-passages"], False),
    ("auto, warm, --warm-lengths 0", ["--warm-lengths", "0"], False),
    # What --backend auto serves on a CPU without native bf16: float32, ONNX Runtime's trunk,
    # passages by OpenVINO beside it (and without them).
    ("float32 onnxruntime, warm", ["--backend", "onnxruntime", "--dtype", "float32"], False),
    (
        "float32 onnxruntime, warm, --no-compiled-passages",
        ["--backend", "onnxruntime", "--dtype", "float32", "--no-compiled-passages"],
        False,
    ),
)


def status_mib(pid: int, field: str) -> float:
    """A ``/proc/PID/status`` memory field (``VmRSS``, ``VmHWM``) in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return round(int(line.split()[1]) / 1024.0, 1)
    return float("nan")


def measure_one(
    host: ModelHost, bundle: Bundle, model: str | None, flags: list[str], env: dict[str, str]
) -> dict[str, float]:
    with served(bundle, model, 2, flags, env) as (process, stub):
        out = {"serving_mib": status_mib(process.pid, "VmRSS")}
        stub.Classify(classifier_pb2.ClassifyRequest(prompt="How do tides work?"), timeout=120)
        out["after_prompt_mib"] = status_mib(process.pid, "VmRSS")
        text = document(host, 4096, random.Random(0))
        stub.Classify(classifier_pb2.ClassifyRequest(prompt=text), timeout=300)
        out["after_4k_text_mib"] = status_mib(process.pid, "VmRSS")
        out["peak_mib"] = status_mib(process.pid, "VmHWM")
    return out


def measure(tiny: bool) -> dict[str, object]:
    host, bundle = load(tiny, passage_tokens=128)
    graphs = Path(tempfile.mkdtemp())  # the cold variant's cache: the models folder shared, no graphs
    (graphs / "models").symlink_to(cache_dir() / "models", target_is_directory=True)
    results: dict[str, object] = {}
    for name, flags, cold in VARIANTS:
        env = dict(os.environ)
        if cold or "warm" in name:
            env["STEERGUARD_CACHE_DIR"] = str(graphs)
        results[name] = measure_one(host, bundle, str(host.source) if tiny else None, flags, env)
    return {"variants": results, "model": "tiny" if tiny else "SmolLM2-135M-Instruct"}


if __name__ == "__main__":
    sys.exit(served_bench_main(__doc__, "reports/bench/memory.json", measure))

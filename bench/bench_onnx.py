"""ONNX Runtime for the truncated model, side by side with PyTorch (issue 24's latency levers).

Why: a cache miss is one forward pass up to the probe layer, after the chat
template's cached prefix (classifier_service.prefix). The issue asks whether
ONNX Runtime runs that pass faster than PyTorch without changing verdicts.
This exports exactly the classifier's miss path: the decoder layers up to
the probe layer, with the template prefix's keys and values baked into the
graph as constants, taking the suffix's token ids and positions and
returning the probe layer's state at the last token. The graph is the
classifier's own (``classifier_service.accelerated``, ``--backend
openvino``): a plain Llama forward (RMSNorm, rotary, grouped-query attention
over prefix + suffix, SiLU MLP) written with the model's own modules, exported with
``torch.onnx.export``; its states are checked against the PyTorch prefix path
before anything is timed.

Timed alternately in one run, batch 1, on fresh prompts (the bench's
templated set): PyTorch float32, PyTorch bfloat16 (the served default on
CPUs with native bf16) and ONNX Runtime float32 (all graph optimisations,
the same thread count). Reported: p50 per lever, its ratio to float32,
and the verdicts (at the bundle's threshold) that differ from float32's.

    python bench/bench_onnx.py [--prompts 40] [--tiny] [--out reports/bench/onnx.json]

Needs ``onnxruntime``, ``onnx`` and ``onnxscript`` (the ``dev`` extra: a
measurement, not a serving path). With ``openvino`` installed (``pip install
openvino``), the same graph compiled by OpenVINO is timed too, in float32 and,
on CPUs with native bf16, bfloat16; with ``nncf`` (the ``dev`` extra), also
with its weights compressed to int8 (data-free; activations as served).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench_classifier import prompts  # noqa: E402  (bench/, on the path when a benchmark runs)
from classifier_setup import load  # noqa: E402
from report import save  # noqa: E402

from classifier_service.accelerated import INPUTS, PrefixedTrunk, export, feeds, ort_session  # noqa: E402
from classifier_service.prefix import SharedPrefix  # noqa: E402
from steerguard.bundle import Bundle  # noqa: E402
from steerguard.model.chat import normalise_request  # noqa: E402
from steerguard.model.host import ModelHost  # noqa: E402


def openvino_calls(path: Path, threads: int, prefix_len: int) -> dict[str, Any]:
    """The same ONNX graph compiled by OpenVINO, in float32 and (where the CPU has it) bfloat16.

    Empty when ``openvino`` is not installed: the lever is measured, not served.
    """
    try:
        import openvino as ov
    except ImportError:
        return {}
    core = ov.Core()
    model = core.read_model(str(path))
    native_bf16 = "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    precisions = ["f32", "bf16"] if native_bf16 else ["f32"]
    out: dict[str, Any] = {}
    for precision in precisions:
        config = {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": precision}
        compiled = core.compile_model(model, "CPU", config)
        out[f"openvino_{'float32' if precision == 'f32' else 'bfloat16'}"] = _ov_call(compiled, prefix_len)
    int8 = int8_weights(core.read_model(str(path)))
    if int8 is not None:
        config = {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": precisions[-1]}
        out["openvino_int8_weights"] = _ov_call(core.compile_model(int8, "CPU", config), prefix_len)
    return out


def int8_weights(model: Any) -> Any:
    """The graph with its matrices' weights in int8 (NNCF's data-free weight compression,
    activations unchanged); None without ``nncf``."""
    try:
        import nncf
    except ImportError:
        return None
    return nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM)


def _ov_call(compiled: Any, prefix_len: int) -> Any:
    def call(ids: list[int]) -> torch.Tensor:
        inputs = feeds(prefix_len, ids[prefix_len:], None)
        return last_state(np.array(compiled([inputs[n] for n in INPUTS])[compiled.output(0)]))

    return call


def last_state(states: np.ndarray) -> torch.Tensor:
    """The graph's first half: the last position's state (the second is the span mean)."""
    return torch.from_numpy(np.asarray(states, dtype=np.float32))[:, : states.shape[1] // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").strip().splitlines()[0])
    parser.add_argument("--prompts", type=int, default=40)
    parser.add_argument("--tiny", action="store_true", help="a tiny random model (a smoke test)")
    parser.add_argument("--out", default="reports/bench/onnx.json")
    args = parser.parse_args()
    threads = torch.get_num_threads()
    host, bundle = load(args.tiny)
    bf16 = ModelHost.load(host.source, max_layers=bundle.classifier_layers, dtype="bfloat16")
    levers = {"float32": SharedPrefix.for_host(host), "bfloat16": SharedPrefix.for_host(bf16)}
    assert None not in levers.values(), "the template has no shared prefix"
    prefix, layer = levers["float32"], bundle.probe_layer
    folder = Path(tempfile.mkdtemp())
    started = time.perf_counter()
    graph = export(PrefixedTrunk(host, prefix, layer).eval(), folder, feeds(len(prefix), [1, 2, 3], None))
    session = ort_session(graph, threads)
    export_s = time.perf_counter() - started
    rows = [host.token_ids(normalise_request(p)) for p in prompts(args.prompts, "onnx")]
    rows = [r for r in rows if prefix.fits(r)]

    def run_ort(ids: list[int]) -> torch.Tensor:
        return last_state(session.run(None, feeds(len(prefix), ids[len(prefix) :], None))[0])

    calls = {
        "float32": lambda ids: levers["float32"].last_token_states([ids], layer),
        "bfloat16": lambda ids: levers["bfloat16"].last_token_states([ids], layer),
        "onnxruntime_float32": run_ort,
        **openvino_calls(graph, threads, len(prefix)),
    }
    result = measure(calls, rows, bundle)
    result.update(export_s=round(export_s, 1), prompts=len(rows), threads=threads, probe_layer=layer)
    save(result, args.out)


def measure(calls: dict[str, Any], rows: list[list[int]], bundle: Bundle) -> dict[str, Any]:
    """p50 per lever (alternating, after a warm-up), its ratio to float32, and verdicts changed."""
    for call in calls.values():  # warm-up: first-call allocations and ORT's arena
        for ids in rows[:3]:
            call(ids)
    times: dict[str, list[float]] = {name: [] for name in calls}
    states: dict[str, list[torch.Tensor]] = {name: [] for name in calls}
    with torch.inference_mode():
        for ids in rows:
            for name, call in calls.items():
                start = time.perf_counter()
                states[name].append(call(ids).float().reshape(1, -1))
                times[name].append(time.perf_counter() - start)
    unsafe = {n: bundle.score(torch.cat(s)).unsafe >= bundle.threshold for n, s in states.items()}
    base = torch.cat(states["float32"])
    out: dict[str, Any] = {}
    for name in calls:
        p50 = statistics.median(times[name]) * 1000
        out[name] = {
            "p50_ms": round(p50, 2),
            "speed_vs_float32": round(statistics.median(times["float32"]) * 1000 / p50, 3),
            "verdicts_changed": int((unsafe[name] != unsafe["float32"]).sum()),
            "max_state_diff": round(float((torch.cat(states[name]) - base).abs().max()), 5),
        }
    return out


if __name__ == "__main__":
    main()

"""Classifier service benchmarks, every ratio measured side by side in one run.

Targets (issue 3), all over real gRPC on localhost unless said otherwise:

1. cache-miss latency at batch 1 with early exit (only ``probe_layer + 1``
   layers loaded and run, from the template prefix's cached keys/values) vs
   a full-model forward (all layers, final norm and LM head, the probe state
   read from ``hidden_states``): p50 <= 0.6x; early exit without the prefix
   cache is measured in the same rotation and reported too;
2. 16 concurrent clients with micro-batching vs the same requests one at a
   time: throughput >= 2.5x;
3. a cache hit (Redis) over gRPC: p50 <= 2 ms and >= 20x faster than a miss;
4. the served default's miss latency over gRPC vs the evaluation's MiniLM +
   logistic-regression baseline at batch 1, the two alternating on the same
   prompts (issue 24: <= 2.0x), on the templated prompts below and on
   held-out ordinary prompts (``--data``); each server (the default, the
   other backends, and with a bundle that has an early exit, the default
   without it) is ``steerguard serve classifier`` in a process of its own,
   and each alternates with MiniLM + LR alone.

With target 2 the run also reports the *compute ceiling*: in process, no
gRPC, the same prompts' probe states 16 at a time vs one at a time, with the
suffixes packed (what the service does) and plainly padded, measured in the
same rounds as the served throughput. No server can batch better than its
model forward does, so this says how much of the ceiling the serving path
keeps. It also reports the model's largest matrix product at one prompt's
tokens vs a batch's: that product's own speed-up bounds the ceiling.

Also reported: the classifier's ``--dtype bfloat16`` against float32 in
process (rows/s at batch 1 and 16, and how many verdicts differ).

Variants are interleaved (alternating order) so drift in a shared machine's
load hits both sides of a ratio alike. Misses use distinct prompts and
servers without a cache. Redis is a ``redis-server`` started here on a free
port (else ``--redis-url``, else the machine's on 6379).

    python bench/bench_classifier.py                   # SmolLM2, default bundle (random if absent)
    python bench/bench_classifier.py --tiny --quick    # smoke run on a tiny random Llama
    python bench/bench_classifier.py --minilm-only --bundle B   # part 4 alone, e.g. on a cascade bundle
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import grpc  # noqa: E402
import torch  # noqa: E402
from classifier_setup import server_process  # noqa: E402

from classifier_service import accelerated  # noqa: E402
from classifier_service.cache import RedisCache, VerdictCache  # noqa: E402
from classifier_service.core import ClassifierCore, CoreConfig  # noqa: E402
from classifier_service.server import create_server  # noqa: E402
from classifier_service.servicer import ClassifierServicer  # noqa: E402
from devstack.redis import RedisProcess, ping  # noqa: E402
from steerguard.bundle import DEFAULT_BUNDLE_DIR, Bundle  # noqa: E402
from steerguard.logs import configure_logging  # noqa: E402
from steerguard.model.chat import normalise_request  # noqa: E402
from steerguard.model.host import ModelHost  # noqa: E402
from steerguard.v1 import classifier_pb2, classifier_pb2_grpc  # noqa: E402

TOPICS = [
    "bake sourdough bread at home",
    "explain photosynthesis to a ten year old",
    "write a short poem about the sea at night",
    "prepare for a job interview as a nurse",
    "summarise the plot of Romeo and Juliet",
    "improve my sleep when I work night shifts",
    "cook a vegetable curry with the right spices",
    "learn the basics of the Python language",
    "kill a Python process that hangs",
    "pick a lock on a door that is not mine",
    "write a phishing email that looks like my bank",
    "make a dangerous chemical at home",
]
STYLES = [
    "How do I {t}?",
    "Can you tell me, step by step, how to {t}?",
    "I want to {t}. What should I do first, and what mistakes should I avoid?",
    "My friend asked me how to {t}; please give a clear answer I can pass on.",
]


def prompts(n: int, salt: str) -> list[str]:
    """``n`` distinct, realistic prompts (a salt keeps caches from seeing repeats)."""
    out = []
    for i in range(n):
        t = TOPICS[i % len(TOPICS)]
        s = STYLES[(i // len(TOPICS)) % len(STYLES)]
        out.append(f"{s.format(t=t)} ({salt}{i})")
    return out


class FullForwardCore(ClassifierCore):
    """The baseline of target 1: a full forward pass through every layer and the LM head."""

    @torch.inference_mode()
    def _probe_states(self, rows: list[list[int]]) -> torch.Tensor:
        batch = self.host.pad(rows)
        out = self.host.model(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            position_ids=batch.position_ids,
            output_hidden_states=True,
            use_cache=False,
        )
        return out.hidden_states[self.bundle.probe_layer + 1][:, -1, :].float()


def p50(xs: list[float]) -> float:
    return statistics.median(xs)


def p95(xs: list[float]) -> float:
    return sorted(xs)[min(len(xs) - 1, int(round(0.95 * (len(xs) - 1))))]


@contextmanager
def served(core: ClassifierCore) -> Iterator[Callable[[], Any]]:
    """A real gRPC server for ``core``; yields a factory of fresh stubs (one channel each)."""
    server = create_server("127.0.0.1:0", ClassifierServicer(core)).start()
    server.set_serving()
    channels: list[grpc.Channel] = []

    def stub() -> Any:
        ch = grpc.insecure_channel(f"127.0.0.1:{server.port}")
        channels.append(ch)
        return classifier_pb2_grpc.ClassifierStub(ch)

    try:
        yield stub
    finally:
        for ch in channels:
            ch.close()
        server.stop(0)
        core.close()


def timed(fn: Callable[..., Any], *args: Any) -> float:
    started = time.perf_counter()
    fn(*args)
    return time.perf_counter() - started


def rows_per_s(fn: Callable[[list[list[int]]], Any], rows: list[list[int]], size: int) -> float:
    """In-process rate of ``fn`` over ``rows``, ``size`` rows per call."""
    started = time.perf_counter()
    for i in range(0, len(rows), size):
        fn(rows[i : i + size])
    return len(rows) / (time.perf_counter() - started)


def paired_ratio(num: list[float], den: list[float]) -> float:
    """Median of the per-round ratios (measurements of one round were taken together)."""
    return statistics.median(a / b for a, b in zip(num, den, strict=True))


def classify(stub: Any, prompt: str) -> Any:
    return stub.Classify(classifier_pb2.ClassifyRequest(prompt=prompt), timeout=120)


# --- setup ----------------------------------------------------------------------------


def load(args: argparse.Namespace, tmp: Path) -> tuple[str | None, Bundle]:
    from devstack.models import make_random_bundle, make_tiny_llama

    model: str | None = None
    if args.tiny:
        model = str(make_tiny_llama(tmp / "tiny", layers=8, hidden=128))
    if args.bundle or (not args.tiny and (DEFAULT_BUNDLE_DIR / "manifest.json").is_file()):
        return model, Bundle.load(args.bundle)
    full = ModelHost.load(model, threads=args.threads)
    bundle = make_random_bundle(full, tmp / "bundle", probe_layer=args.probe_layer)
    del full
    return model, bundle


@contextmanager
def redis_url(args: argparse.Namespace) -> Iterator[str | None]:
    if args.redis_url:
        yield args.redis_url
        return
    try:
        proc = RedisProcess().start()
    except (FileNotFoundError, RuntimeError):
        yield "redis://127.0.0.1:6379/0" if ping("redis://127.0.0.1:6379/0") else None
        return
    try:
        yield proc.url
    finally:
        proc.close()


# --- the four measurements ------------------------------------------------------------------


def early_exit_vs_full(variants: dict[str, Callable[[], Any]], n: int) -> dict[str, Any]:
    """Batch-1 miss latency of each variant, interleaved in rotating order."""
    stubs = {name: make() for name, make in variants.items()}
    for p in prompts(2, "warm-lat"):
        for stub in stubs.values():
            classify(stub, p)
    times: dict[str, list[float]] = {name: [] for name in stubs}
    names = list(stubs)
    for i, p in enumerate(prompts(n, "lat")):
        for name in names[i % len(names) :] + names[: i % len(names)]:
            times[name].append(timed(classify, stubs[name], p))
    out: dict[str, Any] = {f"{name}_p50_ms": 1000 * p50(t) for name, t in times.items()}
    out.update({f"{name}_p95_ms": 1000 * p95(t) for name, t in times.items()})
    ratio = p50(times["early_exit"]) / p50(times["full_forward"])
    out["ratio_without_prefix_cache"] = p50(times["early_exit_no_prefix"]) / p50(times["full_forward"])
    out.update({"ratio": ratio, "target": "<= 0.6", "pass": ratio <= 0.6})
    return out


def batching(
    early: Callable[[], Any], core: ClassifierCore, n: int, clients: int, rounds: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Served throughput (16 clients vs one at a time) and the in-process compute ceiling.

    Every round measures all five variants back to back in a rotating order,
    and ratios are taken within a round, then the median over rounds: the
    shared machine's speed drifts by up to 1.5x within a minute, so only
    measurements taken close together compare. ``n`` requests per round give
    each client ``n / clients`` in a row: enough to measure steady batching
    rather than the first and last partial batches.
    """
    seq_stub = early()
    conc_stubs = [early() for _ in range(clients)]
    for s in conc_stubs:
        classify(s, "warm up this channel")
    prefix = core.prefix
    assert prefix is not None
    layer = core.bundle.probe_layer
    core._probe_states([core.host.token_ids(normalise_request("warm up"))] * 2)
    batch_sizes: list[float] = []

    def sequential(ps: list[str]) -> float:
        return len(ps) / sum(timed(classify, seq_stub, p) for p in ps)

    def concurrent(ps: list[str]) -> float:
        shares = [ps[i::clients] for i in range(clients)]
        before = core.forward_passes
        errors: list[BaseException] = []

        def run(stub: Any, mine: list[str]) -> None:
            try:
                for p in mine:
                    classify(stub, p)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=run, args=(s, m)) for s, m in zip(conc_stubs, shares, strict=True)]
        started = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - started
        if errors:
            raise errors[0]
        batch_sizes.append(len(ps) / max(1, core.forward_passes - before))
        return len(ps) / wall

    def in_process(fn: Callable[[list[list[int]]], Any], size: int) -> Callable[[list[str]], float]:
        return lambda ps: rows_per_s(fn, [core.host.token_ids(normalise_request(p)) for p in ps], size)

    variants: dict[str, Callable[[list[str]], float]] = {
        "served_one": sequential,
        "served_concurrent": concurrent,
        "inproc_one": in_process(lambda b: prefix.last_token_states(b, layer), 1),
        "inproc_packed": in_process(core._probe_states, clients),
        "inproc_padded": in_process(lambda b: _padded_states(core, b), clients),
    }
    names = list(variants)
    rates: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            rates[name].append(variants[name](prompts(n, f"{name}{r}-")))

    def ratio(num: str, den: str) -> float:
        return paired_ratio(rates[num], rates[den])

    served = ratio("served_concurrent", "served_one")
    ceiling = ratio("inproc_packed", "inproc_one")
    throughput = {
        "one_at_a_time_rps": statistics.median(rates["served_one"]),
        "concurrent_rps": statistics.median(rates["served_concurrent"]),
        "clients": clients,
        "requests_per_round": n,
        "rounds": rounds,
        "round_ratios": [
            round(a / b, 3) for a, b in zip(rates["served_concurrent"], rates["served_one"], strict=True)
        ],
        "mean_batch_size": statistics.mean(batch_sizes),
        "ratio": served,
        "share_of_ceiling": served / ceiling,
        "target": ">= 2.5",
        "pass": served >= 2.5,
    }
    limit = {
        "one_at_a_time_rows_per_s": statistics.median(rates["inproc_one"]),
        "packed_rows_per_s": statistics.median(rates["inproc_packed"]),
        "padded_rows_per_s": statistics.median(rates["inproc_padded"]),
        "ratio_packed": ceiling,
        "ratio_padded": ratio("inproc_padded", "inproc_one"),
        "batch": clients,
        "target": "reported (the most micro-batching can give on this machine)",
    }
    return throughput, limit


def _padded_states(core: ClassifierCore, rows: list[list[int]]) -> Any:
    """The prefix path without packing: every suffix left-padded to the longest."""
    from classifier_service.packing import Lines

    prefix = core.prefix
    assert prefix is not None
    n = len(prefix)
    width = max(len(r) - n for r in rows)
    one_per_line = Lines([[i] for i in range(len(rows))], width)
    return prefix.last_token_states(rows, core.bundle.probe_layer, plan=one_per_line)


def cache_hits(cached: Callable[[], Any], n: int, passes: int, backend: str) -> dict[str, Any]:
    stub = cached()
    classify(stub, "warm up the channel and the cache")
    ps = prompts(n, "hit")
    misses = [timed(classify, stub, p) for p in ps]
    hits: list[float] = []
    for _ in range(passes):
        for p in ps:
            started = time.perf_counter()
            v = classify(stub, p)
            hits.append(time.perf_counter() - started)
            assert v.cached, "expected a cache hit"
    speedup = p50(misses) / p50(hits)
    return {
        "backend": backend,
        "hit_p50_ms": 1000 * p50(hits),
        "hit_p95_ms": 1000 * p95(hits),
        "miss_p50_ms": 1000 * p50(misses),
        "speedup": speedup,
        "target": "p50 <= 2 ms and >= 20x",
        "pass": p50(hits) <= 0.002 and speedup >= 20,
    }


def matmul_rates(core: ClassifierCore, n: int, clients: int) -> dict[str, Any]:
    """The model's largest matrix product at one prompt's tokens vs ``clients`` prompts' tokens.

    About 80% of a forward pass is these products, so their speed-up from
    batching bounds the compute ceiling: when they already run near the
    CPU's peak for one prompt, batching cannot gain much more.
    """
    prefix = core.prefix
    assert prefix is not None
    lengths = [len(core.host.token_ids(normalise_request(p))) - len(prefix) for p in prompts(n, "mm")]
    tokens = max(1, round(statistics.mean(lengths)))
    linears = [m for m in core.host.layers[0].modules() if isinstance(m, torch.nn.Linear)]
    weight = max((m.weight for m in linears), key=torch.numel).detach()

    def gflops(m: int) -> float:
        x = torch.randn(m, weight.shape[1], dtype=weight.dtype)
        torch.nn.functional.linear(x, weight)
        reps = max(3, 20_000 // m)
        started = time.perf_counter()
        for _ in range(reps):
            torch.nn.functional.linear(x, weight)
        return 2 * m * weight.numel() * reps / (time.perf_counter() - started) / 1e9

    one, many = [], []
    for _ in range(3):
        one.append(gflops(tokens))
        many.append(gflops(tokens * clients))
    return {
        "weight_shape": list(weight.shape),
        "tokens_one": tokens,
        "tokens_batch": tokens * clients,
        "gflops_one": statistics.median(one),
        "gflops_batch": statistics.median(many),
        "ratio": statistics.median(many) / statistics.median(one),
        "target": "reported (why the ceiling is where it is)",
    }


def bfloat16_vs_float32(
    core: ClassifierCore, model: str | None, threads: int, n: int, clients: int, rounds: int
) -> dict[str, Any]:
    """The classifier's ``--dtype bfloat16`` vs float32, in process: rows/s and verdict agreement."""
    from steerguard.verdict import verdicts_from_states

    host = ModelHost.load(model, max_layers=core.host.loaded_layers, threads=threads, dtype="bfloat16")
    half = ClassifierCore(host, core.bundle, None, core.config)
    try:
        rows = [core.host.token_ids(normalise_request(p)) for p in prompts(n, "dtype")]

        half._probe_states(rows[:2])
        rates: dict[str, list[float]] = {"f32_one": [], "bf16_one": [], "f32_batch": [], "bf16_batch": []}
        for _ in range(rounds):
            for key in rates:
                which = core if key.startswith("f32") else half
                size = 1 if key.endswith("one") else clients
                rates[key].append(rows_per_s(which._probe_states, rows, size))
        score = {
            name: [v.score for v in verdicts_from_states(core.bundle, c._probe_states(rows))]
            for name, c in (("f32", core), ("bf16", half))
        }
        t = core.bundle.threshold
        flips = sum((a >= t) != (b >= t) for a, b in zip(score["f32"], score["bf16"], strict=True))

        return {
            "speedup_one": paired_ratio(rates["bf16_one"], rates["f32_one"]),
            "speedup_batch": paired_ratio(rates["bf16_batch"], rates["f32_batch"]),
            "bf16_batching_ratio": paired_ratio(rates["bf16_batch"], rates["bf16_one"]),
            "max_score_diff": max(abs(a - b) for a, b in zip(score["f32"], score["bf16"], strict=True)),
            "verdict_flips": flips,
            "prompts": len(rows),
            "target": "reported (--dtype bfloat16)",
        }
    finally:
        half.close()


def heldout_benign(data: str | None, bundle: Bundle, n: int) -> list[str]:
    """``n`` ordinary benign prompts calibration never used (held out), when the data is at hand.

    The templated prompts above share phrasings ("step by step", "what should
    I do first") with many harmful requests; held-out ordinary prompts show
    what a chatbot's everyday traffic costs. Latency only: no verdict is scored.
    """
    if data is None or not Path(data).is_dir():
        return []
    from steerguard.evaluation.config import EvalConfig
    from steerguard.evaluation.heldout import load_heldout

    return [e.prompt for e in load_heldout(bundle, data, EvalConfig()).benign[:n]]


def minilm_baseline(
    probes: dict[str, Callable[[str], Any]], sets: dict[str, list[str]], exits: Callable[[str], bool]
) -> dict[str, Any]:
    """Batch 1, fresh prompts: each probe variant vs MiniLM + LR, the two alternating, in one run.

    Target (issue 24): the served default, a miss over gRPC, within 2.0x the
    MiniLM + LR call, on each prompt set. ``exits`` tells whether a prompt
    leaves at the bundle's early exit (reported per set).
    """
    import numpy as np

    from steerguard.evaluation.baselines import MiniLM, fit_minilm_lr

    mini = MiniLM()
    train = prompts(24, "fit")
    labels = np.array([1 if any(w in p for w in ("lock", "phishing", "dangerous")) else 0 for p in train])
    lr = fit_minilm_lr(mini.embed(train), labels, np.ones(len(train)))

    def baseline(p: str) -> None:
        lr.predict_proba(mini.embed([p], batch_size=1))

    for p in prompts(2, "warm-base"):
        for fn in [baseline, *probes.values()]:
            fn(p)
    out: dict[str, Any] = {"target": "served default over gRPC <= 2.0x MiniLM + LR, p50, on every set"}
    for set_name, items in sets.items():
        # Each variant alternates with MiniLM + LR alone: with every variant in one rotation, each
        # call followed other models' calls on the same 2 cores and was slowed by them (the served
        # default 16-18 ms in the rotation, 13.9 ms alternating with MiniLM alone, 10-11 ms alone,
        # on an Intel Xeon with AMX; docs/benchmarks.md).
        out[set_name] = {}
        for name in probes:
            pair = _alternate({"minilm_lr": baseline, name: probes[name]}, items, [name])
            out[set_name].setdefault("prompts", pair["prompts"])
            out[set_name][name] = {**pair[name], "minilm_lr_p50_ms": pair["minilm_lr_p50_ms"]}
        out[set_name]["minilm_lr_p50_ms"] = out[set_name]["served_default_grpc"]["minilm_lr_p50_ms"]
        out[set_name]["cascade_exits"] = f"{sum(exits(p) for p in items)} of {len(items)}"
    served = [out[name]["served_default_grpc"]["ratio_over_minilm"] for name in sets]
    out["pass"] = bool(served) and max(served) <= 2.0
    return out


def _alternate(fns: dict[str, Callable[[str], Any]], items: list[str], probes: list[str]) -> dict[str, Any]:
    """p50 and p95 of each function over ``items``, in alternating order; ratios over MiniLM + LR."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    for i, p in enumerate(items):
        for name in names if i % 2 == 0 else names[::-1]:
            times[name].append(timed(fns[name], p))
    base = p50(times["minilm_lr"])
    out: dict[str, Any] = {"prompts": len(items), "minilm_lr_p50_ms": 1000 * base}
    for name in probes:
        out[name] = {
            "p50_ms": 1000 * p50(times[name]),
            "p95_ms": 1000 * p95(times[name]),
            "ratio_over_minilm": p50(times[name]) / base,
        }
    return out


# --- main -------------------------------------------------------------------------------


def parts_one_to_three(
    args: argparse.Namespace,
    results: dict[str, Any],
    stack: ExitStack,
    model: str | None,
    bundle: Bundle,
    early_pair: tuple[ClassifierCore, Callable[[], Any]],
    config: CoreConfig,
    n: tuple[int, int, int, int],
) -> None:
    """Early exit vs a full forward pass, micro-batching, bfloat16 and cache hits."""
    n_lat, n_tp, n_hit, passes = n
    rounds = args.rounds or (2 if args.quick else 5)
    early_core, early = early_pair
    early_host = early_core.host
    full_host = ModelHost.load(model, threads=args.threads)
    results["setup"] = {
        "model": early_host.identity.name,
        "bundle_id": bundle.bundle_id,
        "probe_layer": bundle.probe_layer,
        "layers_loaded_early_exit": early_host.loaded_layers,
        "layers_full": full_host.loaded_layers,
        "torch_threads": torch.get_num_threads(),
        "max_batch_size": args.max_batch_size,
        "max_batch_wait_ms": args.max_batch_wait_ms,
    }
    plain = replace(config, share_prefix=False)
    early_no_prefix = stack.enter_context(served(ClassifierCore(early_host, bundle, None, plain)))
    full = stack.enter_context(served(FullForwardCore(full_host, bundle, None, plain)))

    print("1/4 early exit vs full forward (batch 1, misses) ...", flush=True)
    variants = {"early_exit": early, "early_exit_no_prefix": early_no_prefix, "full_forward": full}
    results["early_exit_vs_full"] = early_exit_vs_full(variants, n_lat)
    print("2/4 micro-batching throughput ...", flush=True)
    results["micro_batching"], results["compute_ceiling"] = batching(
        early, early_core, n_tp, args.clients, rounds
    )
    results["matmul"] = matmul_rates(early_core, n_tp, args.clients)
    results["bfloat16"] = bfloat16_vs_float32(early_core, model, args.threads, 64, args.clients, 3)

    print("3/4 cache hits over gRPC ...", flush=True)
    url = stack.enter_context(redis_url(args))
    cache: VerdictCache
    if url:
        cache, backend = RedisCache(url, ttl_seconds=600, timeout_seconds=0.5), "redis"
    else:
        from classifier_service.cache import MemoryCache

        cache, backend = MemoryCache(max_entries=10000, ttl_seconds=600), "memory (no Redis found)"
    cached = stack.enter_context(served(ClassifierCore(early_host, bundle, cache, config)))
    results["cache_hit"] = cache_hits(cached, n_hit, passes, backend)


def part_four(
    args: argparse.Namespace,
    stack: ExitStack,
    model: str | None,
    bundle: Bundle,
    early_core: ClassifierCore,
    n_lat: int,
) -> dict[str, Any]:
    """The served default (bfloat16 where native, the cascade) and its variants vs MiniLM + LR.

    Each served variant is ``steerguard serve classifier`` in a process of its
    own, as deployed (:func:`classifier_setup.server_process`): in one process
    the engines slowed each other (OpenVINO's miss took 14 ms right after an
    ONNX Runtime call against 7.6 ms alone), which measured the bench, not the
    server.
    """

    def serve(*flags: str) -> Callable[[str], Any]:
        return functools.partial(
            classify, stack.enter_context(server_process(bundle, model, args.threads, [*flags]))
        )

    default = serve()
    probes = {
        "float32_in_process": lambda p: early_core.classify([normalise_request(p)]),
        "served_default_grpc": default,
    }
    if bundle.cascade is not None:  # the same server without the bundle's early exit, side by side
        probes["served_no_cascade_grpc"] = serve("--no-cascade")
    # The same server on each other backend that applies here, side by side.
    chosen = accelerated.auto_engine() or "torch"
    for other in ["torch", *accelerated.ENGINES]:
        if other != chosen and (other == "torch" or accelerated.available(other)):
            probes[f"served_{other}_grpc"] = serve("--backend", other)
    sets = {"templated": prompts(n_lat, "base")}
    held = heldout_benign(args.data, bundle, n_lat)
    if held:
        sets["heldout_benign"] = held

    def exits(p: str) -> bool:
        return bool(default(p).cascade_exit)

    try:
        return minilm_baseline(probes, sets, exits)
    except Exception as exc:
        return {"skipped": f"{type(exc).__name__}: {exc}"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="a tiny random Llama instead of SmolLM2")
    parser.add_argument("--quick", action="store_true", help="fewer samples (smoke run)")
    parser.add_argument("--bundle", default=None, help="bundle directory (default: shipped, else random)")
    parser.add_argument("--probe-layer", type=int, default=None, help="probe layer of a random bundle")
    parser.add_argument("--redis-url", default=None, help="Redis for the cache-hit benchmark")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (the 2 CPU cores)")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=0, help="throughput rounds (default 5, quick 2)")
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--max-batch-wait-ms", type=float, default=CoreConfig.max_batch_wait_ms)
    parser.add_argument("--out", default=None, help="also write the results as JSON here")
    parser.add_argument(
        "--data", default="../shared/data", help="held-out benign prompts for the MiniLM part"
    )
    parser.add_argument("--minilm-only", action="store_true", help="run only part 4 (vs MiniLM + LR)")
    args = parser.parse_args()
    n = (8, 32, 10, 5) if args.quick else (24, 128, 20, 10)  # latency, throughput, hits, passes

    configure_logging("console", "warning")
    torch.set_num_threads(args.threads)
    # Throughput is measured here, not admission: 16 back-to-back clients in this one process (GIL)
    # make steps slow enough that a few calls would be shed (bench_overload.py measures shedding).
    config = CoreConfig(
        max_batch_size=args.max_batch_size,
        max_batch_wait_ms=args.max_batch_wait_ms,
        max_queue_delay_ms=0,
        max_queue_delay_steps=0,
        backend="torch",  # parts 1-3 measure the PyTorch paths; part 4 serves the default beside it
    )
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        model, bundle = load(args, Path(tmp))
        early_host = ModelHost.load(model, max_layers=bundle.probe_layer + 1, threads=args.threads)
        bundle.verify_model(early_host.identity)
        early_core = ClassifierCore(early_host, bundle, None, config)
        early = stack.enter_context(served(early_core))
        if not args.minilm_only:
            parts_one_to_three(args, results, stack, model, bundle, (early_core, early), config, n)
        print("4/4 MiniLM + logistic regression baseline, alternating with the probe ...", flush=True)
        results["vs_minilm_lr"] = part_four(args, stack, model, bundle, early_core, n[0])

    report(results)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    return 0


def verdict(result: dict[str, Any]) -> str:
    return "PASS" if result["pass"] else "MISS"


def report(r: dict[str, Any]) -> None:
    if "setup" in r:
        report_parts_one_to_three(r)
    report_part_four(r["vs_minilm_lr"])


def report_parts_one_to_three(r: dict[str, Any]) -> None:
    s = r["setup"]
    print(
        f"\nmodel {s['model']}, bundle {s['bundle_id']}, probe layer {s['probe_layer']} "
        f"({s['layers_loaded_early_exit']} of {s['layers_full']} layers), {s['torch_threads']} torch threads"
    )
    a = r["early_exit_vs_full"]
    print(
        f"[{verdict(a)}] miss latency p50: early exit {a['early_exit_p50_ms']:.1f} ms vs "
        f"full {a['full_forward_p50_ms']:.1f} ms = {a['ratio']:.2f}x (target {a['target']}); "
        f"without the prefix cache {a['early_exit_no_prefix_p50_ms']:.1f} ms "
        f"= {a['ratio_without_prefix_cache']:.2f}x"
    )
    b = r["micro_batching"]
    print(
        f"[{verdict(b)}] throughput: {b['clients']} clients {b['concurrent_rps']:.1f} req/s "
        f"vs one at a time {b['one_at_a_time_rps']:.1f} req/s = {b['ratio']:.2f}x "
        f"(mean batch {b['mean_batch_size']:.1f}; {b['share_of_ceiling']:.0%} of the ceiling below; "
        f"per round {', '.join(f'{x:.2f}' for x in b['round_ratios'])}; target {b['target']})"
    )
    e = r["compute_ceiling"]
    print(
        f"[info] compute ceiling (in process, no gRPC): {e['batch']} per forward vs one = "
        f"{e['ratio_packed']:.2f}x packed, {e['ratio_padded']:.2f}x padded "
        f"({e['packed_rows_per_s']:.1f} / {e['padded_rows_per_s']:.1f} "
        f"vs {e['one_at_a_time_rows_per_s']:.1f} rows/s)"
    )
    m = r["matmul"]
    print(
        f"[info] matrix products ({m['weight_shape'][0]}x{m['weight_shape'][1]}): "
        f"{m['gflops_batch']:.0f} GFLOP/s at {m['tokens_batch']} tokens vs {m['gflops_one']:.0f} "
        f"at {m['tokens_one']} (one prompt) = {m['ratio']:.2f}x"
    )
    h = r["bfloat16"]
    print(
        f"[info] --dtype bfloat16 vs float32 (in process): {h['speedup_one']:.2f}x at batch 1, "
        f"{h['speedup_batch']:.2f}x at batch {e['batch']} (batching {h['bf16_batching_ratio']:.2f}x); "
        f"{h['verdict_flips']} verdict flips in {h['prompts']} prompts, "
        f"max score difference {h['max_score_diff']:.3f}"
    )
    c = r["cache_hit"]
    print(
        f"[{verdict(c)}] cache hit ({c['backend']}) p50 {c['hit_p50_ms']:.2f} ms "
        f"(p95 {c['hit_p95_ms']:.2f}) vs miss {c['miss_p50_ms']:.1f} ms = {c['speedup']:.0f}x faster "
        f"(target {c['target']})"
    )


def report_part_four(d: dict[str, Any]) -> None:
    if "skipped" in d:
        print(f"[----] MiniLM + LR baseline skipped: {d['skipped']}")
    else:
        for name, m in d.items():
            if not isinstance(m, dict):
                continue
            f32, srv, flat = (
                m["float32_in_process"],
                m["served_default_grpc"],
                m.get("served_no_cascade_grpc"),
            )
            without = (
                f"without the cascade {flat['p50_ms']:.1f} ms = {flat['ratio_over_minilm']:.2f}x; "
                if flat
                else ""
            )
            for other in ("torch", *accelerated.ENGINES):
                if f"served_{other}_grpc" in m:
                    pt = m[f"served_{other}_grpc"]
                    without += f"--backend {other} {pt['p50_ms']:.1f} ms = {pt['ratio_over_minilm']:.2f}x; "
            print(
                f"[{verdict(d)}] {name}: miss p50 vs MiniLM + LR {m['minilm_lr_p50_ms']:.1f} ms (batch 1): "
                f"served default over gRPC {srv['p50_ms']:.1f} ms = {srv['ratio_over_minilm']:.2f}x "
                f"(p95 {srv['p95_ms']:.1f} ms; cascade exits {m['cascade_exits']}; target <= 2.0); {without}"
                f"float32 in process {f32['p50_ms']:.1f} ms = {f32['ratio_over_minilm']:.2f}x"
            )


if __name__ == "__main__":
    sys.exit(main())

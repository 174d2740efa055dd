"""The model and bundle a classifier benchmark runs on: the embedded defaults, or a tiny random pair."""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
from report import save

from devstack.net import free_port, grpc_serving
from steerguard.bundle import Bundle
from steerguard.model.host import AUTO_DTYPE, DTYPES, ModelHost
from steerguard.v1 import classifier_pb2_grpc

REPO = Path(__file__).resolve().parent.parent


def add_dtype_flag(parser: argparse.ArgumentParser) -> None:
    """``--dtype``: the classifier's precision, by default what ``steerguard serve classifier`` serves."""
    parser.add_argument(
        "--dtype",
        choices=[AUTO_DTYPE, *DTYPES],
        default=AUTO_DTYPE,
        help="model precision (auto, the served default: bfloat16 where the CPU has it natively)",
    )


def load(tiny: bool, dtype: str = "float32", **heads: Any) -> tuple[ModelHost, Bundle]:
    """SmolLM2 with the default bundle (only the layers the classifier reads), or with ``tiny`` a
    tiny random Llama and a random bundle with the ``heads`` given (``make_random_bundle`` options),
    in ``dtype`` (``auto``, the classifier's served default: bfloat16 where the CPU has it natively)."""
    if not tiny:
        bundle = Bundle.load()
        return ModelHost.load(None, max_layers=bundle.classifier_layers, dtype=dtype), bundle
    from devstack.models import make_random_bundle, make_tiny_llama

    folder = Path(tempfile.mkdtemp())
    host = ModelHost.load(make_tiny_llama(folder / "model"), dtype=dtype)
    return host, make_random_bundle(host, folder / "bundle", **heads)


@contextmanager
def server_process(
    bundle: Bundle, model: str | None, threads: int, flags: list[str]
) -> Iterator[classifier_pb2_grpc.ClassifierStub]:
    """``steerguard serve classifier`` in a process of its own, as it is deployed.

    Two reasons: a load generator's Python threads must not compete with the
    server's for one interpreter lock, and engines side by side in one process
    slow each other (a thread pool that spins after its call takes the cores
    the next engine needs: OpenVINO after an ONNX Runtime call, 7.6 -> 14.0 ms).
    """
    with served(bundle, model, threads, flags) as (_, stub):
        yield stub


@contextmanager
def served(
    bundle: Bundle, model: str | None, threads: int, flags: list[str], env: dict[str, str] | None = None
) -> Iterator[tuple[subprocess.Popen[bytes], classifier_pb2_grpc.ClassifierStub]]:
    """:func:`server_process`, with the process (its pid for /proc) and an environment of its own."""
    port = free_port()
    argv = [sys.executable, "-m", "steerguard", "serve", "classifier", "--host", "127.0.0.1"]
    argv += ["--port", str(port), "--threads", str(threads), "--log-level", "warning", *flags]
    if model is not None:
        argv += ["--model", model]
    if bundle.path is not None:
        argv += ["--bundle", str(bundle.path)]
    process = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        deadline = time.monotonic() + 300
        while not grpc_serving(f"127.0.0.1:{port}"):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the classifier process did not start")
            time.sleep(0.25)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield process, classifier_pb2_grpc.ClassifierStub(channel)
    finally:
        process.terminate()
        process.wait(timeout=60)


def served_bench_main(doc: str | None, out: str, measure: Callable[[bool], dict[str, object]]) -> int:
    """The ``main`` of a bench of served processes whose only flags are ``--tiny`` and ``--out``."""
    parser = argparse.ArgumentParser(description=(doc or "").splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny random model (smoke run)")
    parser.add_argument("--out", default=out)
    ns = parser.parse_args()
    save(measure(ns.tiny), ns.out)
    return 0

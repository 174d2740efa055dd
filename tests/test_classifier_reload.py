"""The classifier serves a new bundle without a restart (a real ``steerguard serve classifier`` process).

Under 50 concurrent clients, the bundle directory (a symlink, as a volume
swap or a ConfigMap update would present it) is pointed at another bundle:
new verdicts carry the new bundle id and no request fails during the swap. A
corrupt bundle afterwards is rejected and the last good one keeps serving.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from devstack.models import make_random_bundle, make_tiny_llama
from devstack.net import free_port, grpc_serving
from steerguard.model.host import ModelHost
from steerguard.v1 import classifier_pb2, classifier_pb2_grpc

REPO = Path(__file__).resolve().parent.parent
CLIENTS = 50


def _point(link: Path, target: Path) -> None:
    """Swap the symlink atomically (rename over it), as a volume update does."""
    tmp = link.with_name(link.name + ".new")
    tmp.symlink_to(target)
    os.replace(tmp, link)


@pytest.fixture()
def served(tmp_path: Path) -> Iterator[tuple[str, Path, list[str], Path]]:
    model = make_tiny_llama(tmp_path / "model")
    host = ModelHost.load(model)
    ids = [
        make_random_bundle(host, tmp_path / name, seed=seed).bundle_id for name, seed in (("a", 1), ("b", 2))
    ]
    link = tmp_path / "current"
    link.symlink_to(tmp_path / "a")
    port, log = free_port(), tmp_path / "classifier.log"
    argv = [sys.executable, "-m", "steerguard", "serve", "classifier", "--host", "127.0.0.1"]
    argv += ["--port", str(port), "--model", str(model), "--bundle", str(link), "--bundle-poll-s", "0.3"]
    argv += [
        "--max-queue-delay-ms",
        "0",
        "--max-queue-delay-steps",
        "0",
        "--single-queue-delay-steps",
        "0",
    ]  # 50 clients on one thread is overload: no shedding, only the swap
    with log.open("w") as out:
        process = subprocess.Popen([*argv, "--threads", "1"], stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
    try:
        deadline = time.monotonic() + 120
        while not grpc_serving(f"127.0.0.1:{port}"):
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.2)
        yield f"127.0.0.1:{port}", link, ids, log
    finally:
        process.terminate()
        process.wait(timeout=30)


def _load(
    address: str, stop: threading.Event, seen: list[tuple[float, float, str]], errors: list[str]
) -> None:
    """Classify fresh prompts until ``stop``; each verdict's (sent, received, bundle id)."""
    with grpc.insecure_channel(address) as channel:
        stub = classifier_pb2_grpc.ClassifierStub(channel)
        while not stop.is_set():
            prompt = f"what is the weather {uuid.uuid4().hex}"  # never cached: every call reaches the model
            sent = time.monotonic()
            try:
                reply = stub.Classify(classifier_pb2.ClassifyRequest(prompt=prompt), timeout=30)
                seen.append((sent, time.monotonic(), reply.bundle_id))
            except grpc.RpcError as exc:
                errors.append(f"{exc.code().name}: {exc.details()}")


def test_a_new_bundle_is_served_without_a_restart_and_no_request_fails(
    served: tuple[str, Path, list[str], Path],
) -> None:
    address, link, (first, second), log = served
    stop, seen, errors = threading.Event(), [], []  # type: ignore[var-annotated]
    clients = [threading.Thread(target=_load, args=(address, stop, seen, errors)) for _ in range(CLIENTS)]
    for c in clients:
        c.start()
    try:
        time.sleep(1.0)
        assert seen and {b for _, _, b in seen} == {first}
        _point(link, link.parent / "b")
        deadline = time.monotonic() + 20
        while not any(b == second for _, _, b in seen) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.0)
    finally:
        stop.set()
        for c in clients:
            c.join(timeout=60)
    assert errors == []  # not one request failed across the swap
    swapped = min(received for _, received, b in seen if b == second)
    after = {b for sent, _, b in seen if sent > swapped}
    assert after == {second}, "requests sent after the swap are judged by the new bundle"
    assert {b for _, _, b in seen} == {first, second}

    broken = link.parent / "broken"
    shutil.copytree(link.parent / "b", broken)
    (broken / "manifest.json").write_text(
        (broken / "manifest.json").read_text().replace(second, "sg-corrupt")
    )
    _point(link, broken)
    time.sleep(1.5)
    with grpc.insecure_channel(address) as channel:
        reply = classifier_pb2_grpc.ClassifierStub(channel).Classify(
            classifier_pb2.ClassifyRequest(prompt="hello"), timeout=30
        )
    assert reply.bundle_id == second  # the last good bundle keeps serving
    text = log.read_text()
    assert "bundle_reload_rejected" in text and "bundle_reloaded" in text

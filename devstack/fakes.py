"""Fake classifier and steer services, for the sidecar's failure-mode tests and benchmarks.

They implement the generated servicer classes, so the sidecar talks real gRPC
to them; their behaviour is scripted instead of coming from a model:

- a message containing ``UNSAFE`` is unsafe; ``UNSAFE:<category>`` names the
  category (default ``violence``), ``UNSAFE:<category>~`` names it as unsure
  (``category_unsure``: the head abstained);
- ``fail_unavailable`` makes the next N calls fail with ``UNAVAILABLE``;
- ``delay_s`` delays every call (deadline tests);
- ``abort_code`` fails every call with that status;
- ``fail_after`` lets that many calls succeed, then fails the rest (``INTERNAL``).

Repeated conversations are answered with ``cached=True``, like the real
cache. Not imported by the sidecar itself.
"""

from __future__ import annotations

import base64
import json
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from devstack import child_env
from steerguard.v1 import (
    classifier_pb2,
    classifier_pb2_grpc,
    common_pb2,
    steer_pb2,
    steer_pb2_grpc,
)


@dataclass
class Script:
    """Mutable behaviour shared by a fake servicer and the test driving it."""

    delay_s: float = 0.0
    fail_unavailable: int = 0
    abort_code: grpc.StatusCode | None = None
    fail_after: int | None = None
    require_token: str | None = None
    bundle_id: str = "fake-bundle"  # what DescribeBundle names
    # The categories DescribeBundle lists (the sidecar refuses policy rules for any other).
    categories: tuple[str, ...] = ("cybercrime", "fraud", "violence", "weapons")
    stream_unimplemented: bool = False  # ClassifyStream answers UNIMPLEMENTED, as an older classifier
    stream_chunks: int = 0  # ClassifyStream chunks judged
    calls: list[list[tuple[str, str]]] = field(default_factory=list)
    metadata: list[dict[str, str]] = field(default_factory=list)
    # Each Classify call's lowest_threshold (None when not sent).
    lowest: list[float | None] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def reset(self) -> None:
        """Back to answering normally, with no record."""
        with self.lock:
            self.delay_s, self.fail_unavailable, self.abort_code, self.fail_after = 0.0, 0, None, None
            self.require_token, self.stream_unimplemented, self.stream_chunks = None, False, 0
            self.bundle_id = "fake-bundle"
            self.calls.clear()
            self.metadata.clear()
            self.lowest.clear()

    def authorize(self, context: grpc.ServicerContext) -> None:
        """Like the real services: a wrong or missing bearer token is UNAUTHENTICATED (health stays open)."""
        if self.require_token is None:
            return
        sent = dict(context.invocation_metadata()).get("authorization")
        if sent != f"Bearer {self.require_token}":
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token")

    def enter(self, context: grpc.ServicerContext, messages: list[tuple[str, str]]) -> None:
        self.authorize(context)
        with self.lock:
            self.calls.append(messages)
            self.metadata.append({k: str(v) for k, v in context.invocation_metadata()})
            fail = self.fail_unavailable > 0
            if fail:
                self.fail_unavailable -= 1
            exhausted = self.fail_after is not None and len(self.calls) > self.fail_after
        if self.delay_s:
            time.sleep(self.delay_s)
        if fail:
            context.abort(grpc.StatusCode.UNAVAILABLE, "scripted outage")
        if self.abort_code is not None:
            context.abort(self.abort_code, "scripted failure")
        if exhausted:
            context.abort(grpc.StatusCode.INTERNAL, "scripted failure")


# A few obviously harmful words, so ``python -m devstack up --services fake`` demos sensibly.
KEYWORDS = {"bomb": "violence", "explosive": "violence", "malware": "cybercrime", "ransomware": "cybercrime"}


def judge(text: str) -> tuple[bool, str]:
    """(unsafe, category) of a text under the fake's rule."""
    if "UNSAFE" not in text:
        lowered = text.lower()
        for word, category in KEYWORDS.items():
            if word in lowered:
                return True, category
        return False, ""
    rest = text.split("UNSAFE", 1)[1]
    if rest.startswith(":"):
        word = rest[1:].split()[0] if rest[1:].split() else ""
        return True, word.strip(".,!?") or "violence"  # a trailing "~" (unsure) is kept
    return True, "violence"


def _messages(
    request: classifier_pb2.ClassifyRequest | classifier_pb2.AnswerChunk | steer_pb2.GenerateRequest,
) -> list[tuple[str, str]]:
    """The request's turns; a classify request's answer last, under the role ``answer``."""
    turns = [("user", request.prompt)] if request.prompt else [(m.role, m.content) for m in request.messages]
    answer = getattr(request, "answer", "") or getattr(request, "text", "")
    return [*turns, (ANSWER, answer)] if answer else turns


ANSWER = "answer"


class FakeClassifier(classifier_pb2_grpc.ClassifierServicer):
    """Judges every message with :func:`judge`; any unsafe one makes the conversation unsafe, as the
    real classifier's views do (steerguard.views)."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self._seen: set[tuple[tuple[str, str], ...]] = set()

    def _verdict(self, messages: list[tuple[str, str]], threshold: float | None) -> common_pb2.Verdict:
        # An answer is judged alone, as the real classifier judges it (not its request).
        judged = messages[-1:] if messages and messages[-1][0] == ANSWER else messages
        found = [judge(text) for _, text in reversed(judged)]
        unsafe, category = next((f for f in found if f[0]), (False, ""))
        # "LANG:xx" in a message names its language; the fake bundle is calibrated for English.
        lang = next((t.split("LANG:", 1)[1][:2] for _, t in messages if "LANG:" in t), "en")
        key = tuple(messages)
        cached = key in self._seen
        self._seen.add(key)
        score = 0.97 if unsafe else 0.02
        unsure, category = category.endswith("~"), category.rstrip("~")
        return common_pb2.Verdict(
            score=score,
            unsafe=unsafe,
            category=category,
            category_scores={category: 1.0} if unsafe else {},
            cached=cached,
            bundle_id="fake-bundle",
            threshold=threshold if threshold is not None else 0.5,
            language=lang,
            language_calibrated=lang == "en",
            category_unsure=unsure,
        )

    def Classify(
        self, request: classifier_pb2.ClassifyRequest, context: grpc.ServicerContext
    ) -> common_pb2.Verdict:
        messages = _messages(request)
        self.script.enter(context, messages)
        self.script.lowest.append(request.lowest_threshold if request.HasField("lowest_threshold") else None)
        if not messages:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "give a prompt or messages")
        return self._verdict(messages, request.threshold if request.HasField("threshold") else None)

    def ClassifyBatch(
        self, request: classifier_pb2.ClassifyBatchRequest, context: grpc.ServicerContext
    ) -> classifier_pb2.ClassifyBatchResponse:
        self.script.authorize(context)
        return classifier_pb2.ClassifyBatchResponse(
            verdicts=[self._verdict(_messages(r), None) for r in request.requests]
        )

    def DescribeBundle(
        self, request: common_pb2.DescribeBundleRequest, context: grpc.ServicerContext
    ) -> common_pb2.BundleInfo:
        self.script.authorize(context)
        return common_pb2.BundleInfo(bundle_id=self.script.bundle_id, categories=list(self.script.categories))

    def ClassifyStream(
        self, chunks: Iterator[classifier_pb2.AnswerChunk], context: grpc.ServicerContext
    ) -> Iterator[common_pb2.Verdict]:
        """One verdict per chunk on the answer so far (kept whole: a fake), unsafe once unsafe."""
        if self.script.stream_unimplemented:
            # Read the first chunk, as gRPC does before it finds no handler: aborting earlier
            # races the client's first write and is reported as INTERNAL now and then.
            next(iter(chunks), None)
            context.abort(grpc.StatusCode.UNIMPLEMENTED, "Method not found!")
        turns: list[tuple[str, str]] = []
        answer, threshold, worst = "", None, None
        for i, chunk in enumerate(chunks):
            if i == 0:
                turns = _messages(chunk)[:-1] if chunk.text else _messages(chunk)
                threshold = chunk.threshold if chunk.HasField("threshold") else None
            answer += chunk.text
            messages = [*turns, (ANSWER, answer)]
            self.script.enter(context, messages)
            with self.script.lock:
                self.script.stream_chunks += 1
            verdict = self._verdict(messages, threshold)
            worst = verdict if worst is None or verdict.unsafe else worst
            yield worst


class FakeSteerer(steer_pb2_grpc.SteererServicer):
    """Streams a fixed safe answer naming the steering it was asked for."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.requests: list[steer_pb2.GenerateRequest] = []

    def Generate(
        self, request: steer_pb2.GenerateRequest, context: grpc.ServicerContext
    ) -> Iterator[steer_pb2.GenerateChunk]:
        self.requests.append(request)
        self.script.enter(context, _messages(request))
        mode = steer_pb2.Steering.Mode.Name(request.steering.mode).lower()
        vector = f"category:{request.steering.category}" if request.steering.category else "refusal"
        if request.steering.mode == steer_pb2.Steering.REFUSAL_HEAD:
            vector = "refusal-head"
        words = f"Steered answer ({mode}, {vector}): here is a safe way to think about this.".split(" ")
        words = words[: max(1, request.max_new_tokens or len(words))]
        for i, word in enumerate(words):
            yield steer_pb2.GenerateChunk(text=word if i == 0 else " " + word)
        yield steer_pb2.GenerateChunk(
            finish_reason="stop",
            prompt_tokens=7,
            completion_tokens=len(words),
            applied=steer_pb2.AppliedSteering(mode=request.steering.mode, vector=vector),
        )

    def DescribeBundle(
        self, request: common_pb2.DescribeBundleRequest, context: grpc.ServicerContext
    ) -> common_pb2.BundleInfo:
        return common_pb2.BundleInfo(bundle_id=self.script.bundle_id, categories=list(self.script.categories))


@dataclass
class FakeServer:
    """One running fake service."""

    server: grpc.Server
    port: int
    script: Script

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.stop(None).wait()


def _serve(
    add: object, servicer: object, script: Script, port: int, tls: tuple[bytes, bytes] | None
) -> FakeServer:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    add(servicer, server)  # type: ignore[operator]
    health_servicer = health.HealthServicer()
    health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    address = f"127.0.0.1:{port}"
    if tls is not None:
        bound = server.add_secure_port(address, grpc.ssl_server_credentials([tls]))
    else:
        bound = server.add_insecure_port(address)
    server.start()
    return FakeServer(server, bound, script)


def start_fake_classifier(
    port: int = 0, script: Script | None = None, tls: tuple[bytes, bytes] | None = None
) -> tuple[FakeServer, FakeClassifier]:
    """A fake classifier on loopback (port 0: any free port; ``tls``: (key PEM, cert PEM))."""
    script = script or Script()
    servicer = FakeClassifier(script)
    return _serve(classifier_pb2_grpc.add_ClassifierServicer_to_server, servicer, script, port, tls), servicer


def start_fake_steerer(port: int = 0, script: Script | None = None) -> tuple[FakeServer, FakeSteerer]:
    """A fake steer service on loopback."""
    script = script or Script()
    servicer = FakeSteerer(script)
    return _serve(steer_pb2_grpc.add_SteererServicer_to_server, servicer, script, port, None), servicer


@dataclass
class ChatbotProcess:
    """A demo chatbot running as its own process, with its request log."""

    process: subprocess.Popen[str]
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def requests(self) -> list[dict[str, Any]]:
        """Every request the chatbot received so far, as logged by itself."""
        if not self.log_path.exists():
            return []
        return [r for r in self._records() if "event" not in r]

    def _records(self) -> list[dict[str, Any]]:
        lines = self.log_path.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    def received(self, marker: str) -> list[dict[str, Any]]:
        """Requests whose body contains ``marker``."""
        needle = marker.encode()
        return [r for r in self.requests() if needle in base64.b64decode(r["body_b64"])]

    def abandoned(self, marker: str) -> int:
        """How many requests with ``marker`` in their body the client hung up on before the answer."""
        digests = {r["body_sha256"] for r in self.received(marker)}
        records = self._records() if self.log_path.exists() else []
        return sum(r.get("event") == "client_gone" and r["body_sha256"] in digests for r in records)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def read_ready_port(process: subprocess.Popen[str], timeout_s: float) -> int:
    """Wait for the ``{"event": "ready", "port": N}`` line a steerguard process prints on stdout."""
    return int(read_ready(process, timeout_s)["port"])


def read_ready(process: subprocess.Popen[str], timeout_s: float) -> dict[str, Any]:
    """The ``{"event": "ready", ...}`` line a steerguard process prints on stdout (its ports)."""
    assert process.stdout is not None
    deadline_at = time.monotonic() + timeout_s
    while time.monotonic() < deadline_at:
        if process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before it was ready")
        ready, _, _ = select.select([process.stdout], [], [], 0.2)
        if not ready:
            continue
        line = process.stdout.readline()
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict) and event.get("event") == "ready":
            return event
    raise RuntimeError("process was not ready in time")


def start_demo_chatbot(
    log_path: Path, *, backend: str = "echo", extra_args: tuple[str, ...] = (), timeout_s: float = 30.0
) -> ChatbotProcess:
    """Start ``python -m devstack.demo_chatbot`` on a free loopback port."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "devstack.demo_chatbot",
            "--port",
            "0",
            "--backend",
            backend,
            "--request-log",
            str(log_path),
            *extra_args,
        ],
        stdout=subprocess.PIPE,
        text=True,
        env=child_env(),
    )
    try:
        port = read_ready_port(process, timeout_s)
    except RuntimeError:
        process.kill()
        raise
    return ChatbotProcess(process, port, log_path)


def main(argv: list[str] | None = None) -> int:
    """``python -m devstack.fakes classifier|steer --port P``: a fake service in its own process."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m devstack.fakes", description=main.__doc__)
    parser.add_argument("service", choices=["classifier", "steer"])
    parser.add_argument("--port", type=int, default=0)
    ns = parser.parse_args(argv)
    start = start_fake_classifier if ns.service == "classifier" else start_fake_steerer
    server, _ = start(ns.port)
    print(json.dumps({"event": "ready", "service": f"fake-{ns.service}", "port": server.port}), flush=True)
    stopped = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopped.set())
    stopped.wait()
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Scheduling under load, over a real gRPC channel: chunked long prompts, fair turns, drops, shedding.

The tiny random Llama is fast, so each chunk of a long prompt is slowed by a
fixed sleep between chunks (where the scheduler runs other callers' work);
everything else is the real core, batcher and server.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest

from classifier_service import core as core_module
from classifier_service.core import ClassifierCore, CoreConfig
from steerguard.bundle import Bundle
from steerguard.model.chat import normalise_request
from steerguard.model.host import ModelHost
from steerguard.v1 import classifier_pb2, classifier_pb2_grpc
from tests.serving import serve_core

STEP = 32  # tokens per step: every long prompt below runs in several chunks
CHUNK_SECONDS = 0.05
Req = classifier_pb2.ClassifyRequest


def short_prompt() -> str:
    """A fresh prompt well under one step (hex would cost the tiny tokenizer a token per character)."""
    return f"hi {random.randrange(10**6)}"


def long_prompt() -> str:
    return f"{uuid.uuid4().hex} " + "tell me a long story about the sea and the ships " * 12


def long_batch(n: int = 8) -> classifier_pb2.ClassifyBatchRequest:
    """Distinct prompts (identical ones would join each other's computation)."""
    return classifier_pb2.ClassifyBatchRequest(requests=[Req(prompt=long_prompt()) for _ in range(n)])


@pytest.fixture(scope="module")
def host(tiny_model_dir: Path, tiny_bundle: Bundle) -> ModelHost:
    return ModelHost.load(tiny_model_dir, max_layers=tiny_bundle.classifier_layers)


class Chunks:
    """Wraps the chunked prefill: each chunk takes at least CHUNK_SECONDS; records when chunks end."""

    def __init__(self) -> None:
        self.ends: list[float] = []
        self.original = core_module.chunked_last_state

    def __call__(self, *args: Any, between: Callable[[], bool], **kwargs: Any) -> Any:
        def slow_between() -> bool:
            time.sleep(CHUNK_SECONDS)
            self.ends.append(time.monotonic())
            return between()

        return self.original(*args, between=slow_between, **kwargs)


@pytest.fixture()
def chunks(monkeypatch: pytest.MonkeyPatch) -> Chunks:
    recorder = Chunks()
    monkeypatch.setattr(core_module, "chunked_last_state", recorder)
    return recorder


@pytest.fixture()
def stub(host: ModelHost, tiny_bundle: Bundle) -> Iterator[classifier_pb2_grpc.ClassifierStub]:
    config = CoreConfig(
        max_step_tokens=STEP,
        max_batch_size=4,
        max_batch_wait_ms=0.0,
        max_queue_delay_ms=0,
        max_queue_delay_steps=0,
        single_queue_delay_steps=0,
    )
    yield from serve_core(ClassifierCore(host, tiny_bundle, None, config))


def test_chunked_prefill_gives_the_verdict_of_one_pass(host: ModelHost, tiny_bundle: Bundle) -> None:
    whole = ClassifierCore(host, tiny_bundle, None, CoreConfig(max_step_tokens=0))
    chunked = ClassifierCore(host, tiny_bundle, None, CoreConfig(max_step_tokens=7))
    try:
        convs = [normalise_request(long_prompt()) for _ in range(3)]
        assert all(len(chunked._token_ids(c)) > 4 * 7 for c in convs)
        for a, b in zip(whole.classify(convs), chunked.classify(convs), strict=True):
            assert b.score == pytest.approx(a.score, abs=1e-5)
    finally:
        whole.close()
        chunked.close()


def test_a_single_request_is_served_while_a_big_batch_of_long_prompts_runs(
    stub: classifier_pb2_grpc.ClassifierStub, chunks: Chunks
) -> None:
    with ThreadPoolExecutor(1) as pool:
        big = pool.submit(stub.ClassifyBatch, long_batch(), timeout=60)
        while not chunks.ends:
            time.sleep(0.01)
        started = time.monotonic()
        stub.Classify(Req(prompt=short_prompt()), timeout=10)
        single = time.monotonic() - started
        assert not big.done(), "the batch was still running when the single request was answered"
        assert len(big.result().verdicts) == 8
    assert single < 10 * CHUNK_SECONDS, f"the single request waited {single:.2f} s behind the batch"


def test_work_for_a_call_past_its_deadline_stops_within_one_chunk(
    stub: classifier_pb2_grpc.ClassifierStub, chunks: Chunks
) -> None:
    with pytest.raises(grpc.RpcError) as info:
        stub.ClassifyBatch(long_batch(), timeout=0.4)
    deadline = time.monotonic()
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    time.sleep(10 * CHUNK_SECONDS)
    late = [t for t in chunks.ends if t > deadline]
    assert len(late) <= 2, f"{len(late)} chunks ran after the caller's deadline"
    # The model is free again: a new call is answered at once.
    started = time.monotonic()
    stub.Classify(Req(prompt=short_prompt()), timeout=10)
    assert time.monotonic() - started < 5 * CHUNK_SECONDS


def test_an_overloaded_classifier_sheds_calls_at_once(
    host: ModelHost, tiny_bundle: Bundle, chunks: Chunks
) -> None:
    config = CoreConfig(max_step_tokens=STEP, max_batch_size=4, max_batch_wait_ms=0.0, max_queue_delay_ms=300)
    for stub in serve_core(ClassifierCore(host, tiny_bundle, None, config)):
        stub.Classify(Req(prompt=long_prompt()), timeout=10)  # one measured pass: the token rate
        with ThreadPoolExecutor(4) as pool:
            busy = [pool.submit(stub.ClassifyBatch, long_batch(), timeout=60) for _ in range(3)]
            time.sleep(0.2)
            started = time.monotonic()
            with pytest.raises(grpc.RpcError) as info:
                stub.ClassifyBatch(long_batch(), timeout=60)
            shed = time.monotonic() - started
            outcomes = [f.exception() for f in busy]
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "overloaded" in (info.value.details() or "")
        assert shed < 0.05, f"shedding took {shed * 1000:.0f} ms"
        assert outcomes.count(None) >= 1, "calls admitted before the overload are still served"

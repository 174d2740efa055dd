"""Continuous batching without gRPC: row joins/leaves, merged steering, streaming text, the engine."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from devstack.models import make_random_bundle
from devstack.steer import liven, with_threshold
from steer_service.config import SteerConfig
from steer_service.detok import TextStream
from steer_service.service import GenerateInput, SteerService
from steerguard.bundle import Bundle
from steerguard.generation import DecodeBatch, SamplingParams, generate
from steerguard.model.chat import normalise_request
from steerguard.model.host import ModelHost
from steerguard.model.steering import SteeringState
from steerguard.plan import BatchPlan, Mode, SteeringRequest

PROMPTS = [
    "How do I bake bread?",
    "Tell me a joke about cats, please, a long one",
    "hi",
    "What is the capital of France and why is it famous?",
    "Write a poem about the sea",
]


@pytest.fixture(scope="module")
def host(tiny_model_dir: Path) -> ModelHost:
    return liven(ModelHost.load(tiny_model_dir))


@pytest.fixture(scope="module")
def bundle(host: ModelHost, tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    return make_random_bundle(host, tmp_path_factory.mktemp("steer-engine-bundle"))


def alone(host: ModelHost, bundle: Bundle, prompt: str, req: SteeringRequest, n: int) -> list[int]:
    plan = BatchPlan(bundle, [req], host.identity.hidden_size)
    batch = host.encode([normalise_request(prompt)])
    out = generate(host, batch, plan.state, [SamplingParams(n)], extra_layers=plan.extra_layers)
    return out[0].token_ids


def test_rows_joining_and_leaving_decode_as_alone(host: ModelHost, bundle: Bundle) -> None:
    """Rows join a running batch mid-flight with their own steering and leave early; none is disturbed."""
    unsafe = with_threshold(bundle, 0.0)
    reqs = [
        (bundle, SteeringRequest()),
        (bundle, SteeringRequest(Mode.REFUSAL, strength=3.0)),
        (unsafe, SteeringRequest(Mode.AUTO, strength=3.0)),
        (bundle, SteeringRequest(Mode.CATEGORY, "violence", 3.0)),
        (bundle, SteeringRequest()),
    ]
    lengths = [16, 10, 14, 6, 12]
    expected = [alone(host, b, p, r, n) for (b, r), p, n in zip(reqs, PROMPTS, lengths, strict=True)]
    assert len({tuple(e[:6]) for e in expected}) == len(expected)  # the model is not degenerate

    def start(rows: list[int]) -> DecodeBatch:
        b = reqs[rows[0]][0]
        plan = BatchPlan(b, [reqs[i][1] for i in rows], host.identity.hidden_size)
        batch = host.encode([normalise_request(PROMPTS[i]) for i in rows])
        return DecodeBatch.start(host, batch, plan.state, plan.extra_layers)

    joins = {0: [0], 2: [1, 3], 5: [2], 7: [4]}  # step -> rows joining (same bundle per group)
    outs: list[list[int]] = [[] for _ in PROMPTS]
    running: DecodeBatch | None = None
    ids: list[int] = []
    for step in range(40):
        if step in joins:
            new = start(joins[step])
            if running is None:
                running = new
            else:
                running.extend(new)
            ids += joins[step]
        assert running is not None
        tokens = running.logits.argmax(-1)
        keep = []
        for j, i in enumerate(ids):
            outs[i].append(int(tokens[j]))
            if len(outs[i]) < lengths[i]:
                keep.append(j)
        if not keep:
            if step > max(joins):
                break
            running, ids = None, []
            continue
        if len(keep) < len(ids):
            running.select(keep)
            ids = [ids[j] for j in keep]
        running.step(host, tokens[keep])
    assert outs == expected


def test_steering_state_concat_and_prune() -> None:
    a = SteeringState(deltas={1: torch.ones((2, 3))}, decided=True)
    b = SteeringState(deltas={2: torch.full((1, 3), 2.0)}, decided=True)
    merged = a.concat(b, 2, 1)
    assert merged.deltas[1].tolist() == [[1.0] * 3, [1.0] * 3, [0.0] * 3]
    assert merged.deltas[2].tolist() == [[0.0] * 3, [0.0] * 3, [2.0] * 3]
    merged.select_rows(torch.tensor([2]))
    merged.drop_zero_layers()
    assert list(merged.deltas) == [2]
    with pytest.raises(ValueError, match="decided"):
        SteeringState(decide=lambda s: {}).concat(b, 1, 1)


def test_text_stream_equals_full_decode(host: ModelHost) -> None:
    text = "Grüße aus Köln 🙂, 你好世界! naïve café — done."
    ids = host.tokenizer(text, add_special_tokens=False)["input_ids"]
    stream = TextStream(host.decode)
    pieces = [stream.push(int(t)) for t in ids]
    pieces.append(stream.flush())
    assert "".join(pieces) == host.decode(ids) == text
    assert sum(1 for p in pieces if p) > 5  # streamed, not all at the end
    assert all("\ufffd" not in p for p in pieces)


@pytest.fixture()
def service(host: ModelHost, bundle: Bundle) -> Iterator[SteerService]:
    svc = SteerService(host, bundle, SteerConfig(max_batch_size=4, max_new_tokens_cap=64)).start()
    yield svc
    svc.close()


def test_engine_streams_generate_output(service: SteerService, host: ModelHost, bundle: Bundle) -> None:
    req = SteeringRequest(Mode.REFUSAL, strength=2.0)
    chunks = list(service.submit(GenerateInput(prompt=PROMPTS[0], max_new_tokens=12, steering=req)))
    expected = alone(host, bundle, PROMPTS[0], req, 12)
    assert "".join(c.text for c in chunks) == host.decode(expected)
    last = chunks[-1]
    assert last.finish_reason == "length" and last.completion_tokens == 12
    assert last.applied is not None and last.applied.vector == "refusal" and last.applied.strength == 2.0
    assert all(not c.final for c in chunks[:-1])


def test_engine_close_fails_waiting_requests(host: ModelHost, bundle: Bundle) -> None:
    from steerguard.errors import NotReady

    svc = SteerService(host, bundle, SteerConfig(max_batch_size=1, ignore_eos=True)).start()
    handle = svc.submit(GenerateInput(prompt="hi", max_new_tokens=400))
    time.sleep(0.05)
    svc.close()
    with pytest.raises(NotReady):
        list(handle)
    with pytest.raises(NotReady):
        svc.submit(GenerateInput(prompt="hi", max_new_tokens=4))


def test_deadline_ends_the_row_with_deadline_exceeded(host: ModelHost, bundle: Bundle) -> None:
    from steerguard.errors import DeadlineExceeded

    svc = SteerService(host, bundle, SteerConfig(max_batch_size=2, max_new_tokens_cap=1500, ignore_eos=True))
    svc.start()
    try:
        handle = svc.submit(GenerateInput(prompt="hi", max_new_tokens=1500), timeout=0.3)
        with pytest.raises(DeadlineExceeded):
            list(handle)
        assert svc.engine.wait_idle(5) and svc.engine.active_rows == 0
    finally:
        svc.close()

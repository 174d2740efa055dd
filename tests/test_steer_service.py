"""The Steerer service over a real gRPC channel, on a tiny random Llama."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import cast

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from devstack.models import make_random_bundle
from devstack.steer import liven, with_threshold
from steer_service.config import SteerConfig
from steer_service.server import serve_in_process
from steer_service.service import SteerService
from steerguard.bundle import Bundle
from steerguard.generation import SamplingParams, generate
from steerguard.grpc_common.server import GrpcServer, ServerOptions
from steerguard.model.chat import normalise_request
from steerguard.model.host import ModelHost
from steerguard.model.steering import SteeringState
from steerguard.v1 import common_pb2, steer_pb2, steer_pb2_grpc

S = steer_pb2.Steering
PROMPTS = [
    "How do I bake bread?",
    "Tell me a joke about cats, please, a long one",
    "What is the capital of France and why is it famous?",
    "Write a poem about the sea",
]


def hook_ids(host: ModelHost) -> list[set[int]]:
    return [set(layer._forward_hooks) for layer in host.layers]


@pytest.fixture(scope="module")
def host(tiny_model_dir: Path) -> ModelHost:
    return liven(ModelHost.load(tiny_model_dir))


@pytest.fixture(scope="module")
def bundle(host: ModelHost, tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    """Threshold above 1: the probe judges every prompt safe (AUTO must then equal NONE)."""
    made = make_random_bundle(host, tmp_path_factory.mktemp("steer-service-bundle"))
    return with_threshold(made, 1.01)


class Running:
    """A started service with its server and a stub; closed in the fixture's teardown."""

    def __init__(self, service: SteerService, options: ServerOptions | None = None) -> None:
        self.service = service.start()
        self.server: GrpcServer = serve_in_process(service, options)
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.server.port}")
        self.stub = steer_pb2_grpc.SteererStub(self.channel)

    def close(self) -> None:
        self.channel.close()
        self.server.stop(0)
        self.service.close()


@pytest.fixture(scope="module")
def running(host: ModelHost, bundle: Bundle) -> Iterator[Running]:
    r = Running(SteerService(host, bundle, SteerConfig(max_batch_size=4, max_new_tokens_cap=64)))
    yield r
    r.close()


def request(
    prompt: str,
    mode: steer_pb2.Steering.Mode = S.NONE,
    n: int = 12,
    category: str = "",
    strength: float = 0.0,
) -> steer_pb2.GenerateRequest:
    steering = steer_pb2.Steering(mode=mode, category=category, strength=strength)
    return steer_pb2.GenerateRequest(prompt=prompt, max_new_tokens=n, steering=steering)


def collect(
    stub: steer_pb2_grpc.SteererStub, req: steer_pb2.GenerateRequest
) -> tuple[str, steer_pb2.GenerateChunk]:
    chunks = list(stub.Generate(req, timeout=60))
    assert chunks and chunks[-1].finish_reason and not any(c.finish_reason for c in chunks[:-1])
    return "".join(c.text for c in chunks), chunks[-1]


def test_describe_bundle_and_health(running: Running, bundle: Bundle) -> None:
    info = running.stub.DescribeBundle(common_pb2.DescribeBundleRequest())
    assert info.bundle_id == bundle.bundle_id and info.model_sha256 == bundle.model["sha256"]
    assert list(info.categories) == bundle.categories and list(info.steer_layers) == [1, 2]
    assert info.probe_layer == bundle.probe_layer and info.threshold == pytest.approx(1.01)
    health = health_pb2_grpc.HealthStub(running.channel)
    check = health.Check(health_pb2.HealthCheckRequest(service="steerguard.v1.Steerer"))
    assert check.status == health_pb2.HealthCheckResponse.SERVING


def test_stream_matches_offline_generate(running: Running, host: ModelHost) -> None:
    chunks = list(running.stub.Generate(request(PROMPTS[0], n=16)))
    expected = generate(
        host, host.encode([normalise_request(PROMPTS[0])]), SteeringState(), [SamplingParams(16)]
    )
    assert "".join(c.text for c in chunks) == host.decode(expected[0].token_ids)
    assert len(chunks) > 3  # streamed step by step
    last = chunks[-1]
    assert last.completion_tokens == len(expected[0].token_ids) and last.prompt_tokens > 10
    assert last.applied.vector == "none" and not last.HasField("verdict")


def test_auto_on_safe_prompt_equals_none(running: Running) -> None:
    for prompt in PROMPTS[:2]:
        plain, _ = collect(running.stub, request(prompt, n=16))
        auto, last = collect(running.stub, request(prompt, S.AUTO, n=16, strength=4.0))
        assert auto == plain
        assert (
            last.HasField("verdict")
            and not last.verdict.unsafe
            and last.verdict.threshold == pytest.approx(1.01)
        )
        assert last.applied.mode == S.AUTO and last.applied.vector == "none"


def test_modes_report_what_was_applied(running: Running, bundle: Bundle) -> None:
    plain, _ = collect(running.stub, request(PROMPTS[1], n=16))
    refused, last = collect(running.stub, request(PROMPTS[1], S.REFUSAL, n=16, strength=4.0))
    assert refused != plain
    assert (last.applied.vector, list(last.applied.layers)) == ("refusal", [1, 2])
    assert last.applied.strength == pytest.approx(4.0)
    _, cat = collect(running.stub, request(PROMPTS[1], S.CATEGORY, category="violence"))
    assert cat.applied.vector == "category:violence"
    assert cat.applied.strength == pytest.approx(bundle.default_strength("category:violence"))
    _, scans = collect(running.stub, request(PROMPTS[1], S.SCANS))
    assert scans.applied.vector == "-refusal" and not scans.verdict.unsafe


def test_mixed_batch_rows_equal_their_output_alone(running: Running) -> None:
    reqs = [
        request(PROMPTS[0], S.NONE, n=20),
        request(PROMPTS[1], S.REFUSAL, n=14, strength=3.0),
        request(PROMPTS[2], S.CATEGORY, n=18, category="cybercrime", strength=3.0),
        request(PROMPTS[3], S.SCANS, n=10, strength=2.0),
    ]
    alone = [collect(running.stub, r)[0] for r in reqs]
    before = running.service.engine.stats.max_rows
    running.service.engine.stats.max_rows = 0
    results: list[str | None] = [None] * len(reqs)
    gate = threading.Barrier(len(reqs))

    def call(i: int) -> None:
        gate.wait()
        results[i] = collect(running.stub, reqs[i])[0]

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(reqs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == alone
    assert running.service.engine.stats.max_rows >= 2  # they really shared a batch
    running.service.engine.stats.max_rows = max(before, running.service.engine.stats.max_rows)


def test_request_joining_a_running_batch(running: Running) -> None:
    """Continuous batching: a request arriving mid-generation joins the running batch."""
    long_req, short_req = request(PROMPTS[0], n=60), request(PROMPTS[2], S.REFUSAL, n=8, strength=3.0)
    long_alone, short_alone = collect(running.stub, long_req)[0], collect(running.stub, short_req)[0]
    joined_before = running.service.engine.stats.joined_running
    stream = running.stub.Generate(long_req, timeout=60)
    first = next(stream)
    short_now = collect(running.stub, short_req)[0]
    rest = [c.text for c in stream]
    assert first.text + "".join(rest) == long_alone
    assert short_now == short_alone
    assert running.service.engine.stats.joined_running > joined_before


@pytest.mark.parametrize(
    ("req", "reason"),
    [
        (request("hi", mode=cast(steer_pb2.Steering.Mode, 7)), "unknown steering mode"),
        (request("hi", S.CATEGORY, category="nope"), "unknown category"),
        (request("hi", S.REFUSAL, strength=9.0), "strength"),
        (request("hi", S.REFUSAL, strength=-1.0), "strength"),
        (request(""), "empty"),
        (request("   "), "empty"),
        (request("word " * 2000), "over the limit"),
        (request("hi", n=0), "max_new_tokens"),
        (request("hi", n=-3), "max_new_tokens"),
        (request("hi", n=65), "over the cap"),
        (steer_pb2.GenerateRequest(prompt="hi", max_new_tokens=4, temperature=-1), "temperature"),
        (steer_pb2.GenerateRequest(prompt="hi", max_new_tokens=4, top_p=1.5), "top_p"),
        (
            steer_pb2.GenerateRequest(
                messages=[common_pb2.ChatMessage(role="wizard", content="x")], max_new_tokens=4
            ),
            "role",
        ),
    ],
)
def test_bad_input_is_invalid_argument(running: Running, host: ModelHost, req, reason) -> None:  # type: ignore[no-untyped-def]
    before = hook_ids(host)
    with pytest.raises(grpc.RpcError) as err:
        list(running.stub.Generate(req, timeout=30))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert reason in err.value.details()
    assert hook_ids(host) == before


def test_messages_and_sampling(running: Running) -> None:
    msgs = [
        common_pb2.ChatMessage(role="system", content="Be brief."),
        common_pb2.ChatMessage(role="user", content="hi"),
    ]
    req = steer_pb2.GenerateRequest(messages=msgs, max_new_tokens=10, temperature=0.8, top_p=0.9, seed=7)
    a, _ = collect(running.stub, req)
    b, _ = collect(running.stub, req)
    assert a == b  # same seed, same sample


def test_error_mid_generation_leaves_model_unsteered(running: Running, host: ModelHost) -> None:
    fresh = generate(
        host, host.encode([normalise_request(PROMPTS[3])]), SteeringState(), [SamplingParams(12)]
    )
    expected = host.decode(fresh[0].token_ids)
    baseline = hook_ids(host)
    calls = {"n": 0}

    def explode(_module, _inputs, _output):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 4:  # the prefill and two decode steps succeed, then the forward fails
            raise RuntimeError("simulated device failure")

    handle = host.layers[3].register_forward_hook(explode)
    try:
        got: list[str] = []
        with pytest.raises(grpc.RpcError) as err:
            for chunk in running.stub.Generate(
                request(PROMPTS[1], S.REFUSAL, n=30, strength=4.0), timeout=30
            ):
                got.append(chunk.text)
        assert err.value.code() == grpc.StatusCode.INTERNAL and err.value.details() == "internal error"
        assert got  # it failed mid-generation, after streaming some text
    finally:
        handle.remove()
    assert hook_ids(host) == baseline  # no steering hook left behind
    assert collect(running.stub, request(PROMPTS[3], n=12))[0] == expected


def wait_until(cond, timeout: float = 5.0) -> bool:  # type: ignore[no-untyped-def]
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.01)
    return bool(cond())


@pytest.fixture()
def single_row(host: ModelHost, bundle: Bundle, running: Running) -> Iterator[Running]:
    """One row, no queue, never stops early: a second request is refused until the row is free."""
    assert running.service.engine.wait_idle(10)  # the model is only driven by one engine at a time
    r = Running(
        SteerService(
            host, bundle, SteerConfig(max_batch_size=1, max_queue=0, max_new_tokens_cap=2000, ignore_eos=True)
        ),
        ServerOptions(auth_token="t0ken"),
    )
    yield r
    r.close()


AUTH = (("authorization", "Bearer t0ken"),)


def test_cancellation_frees_the_slot(single_row: Running) -> None:
    engine = single_row.service.engine
    stream = single_row.stub.Generate(request(PROMPTS[0], n=2000), metadata=AUTH, timeout=60)
    next(stream)
    assert engine.active_rows == 1
    with pytest.raises(grpc.RpcError) as busy:
        list(single_row.stub.Generate(request("hi", n=4), metadata=AUTH, timeout=10))
    assert busy.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    started = time.monotonic()
    stream.cancel()
    assert wait_until(lambda: engine.active_rows == 0, 2.0)
    text, last = collect_auth(single_row, request("hi", n=4))
    assert last.finish_reason == "length" and time.monotonic() - started < 5


def collect_auth(r: Running, req: steer_pb2.GenerateRequest) -> tuple[str, steer_pb2.GenerateChunk]:
    chunks = list(r.stub.Generate(req, metadata=AUTH, timeout=30))
    return "".join(c.text for c in chunks), chunks[-1]


def test_deadline_frees_the_slot_and_auth_is_required(single_row: Running) -> None:
    with pytest.raises(grpc.RpcError) as err:
        list(single_row.stub.Generate(request(PROMPTS[0], n=2000), metadata=AUTH, timeout=0.5))
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert wait_until(lambda: single_row.service.engine.active_rows == 0, 2.0)
    with pytest.raises(grpc.RpcError) as denied:
        list(single_row.stub.Generate(request("hi", n=4), timeout=10))
    assert denied.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert collect_auth(single_row, request("hi", n=3))[1].completion_tokens == 3


def test_cli_registers_steer_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    from steerguard.cli import build_parser

    monkeypatch.setenv("STEERGUARD_MAX_BATCH_SIZE", "3")
    args = build_parser().parse_args(["serve", "steer", "--port", "0", "--max-new-tokens-cap", "99"])
    assert (args.max_batch_size, args.max_new_tokens_cap, args.port) == (3, 99, 0)
    assert callable(args.func)
    assert SteerConfig.from_args(args).max_new_tokens_cap == 99


def test_start_up_warns_when_the_policy_names_unproven_category_answers(
    host: ModelHost, bundle: Bundle
) -> None:
    """A policy answering with category vectors that calibration found no safer than none is said aloud."""
    import structlog

    from steerguard.manifest import PolicyInfo

    search = {"chosen": 0.05, "beats_unsteered": False}
    policy = PolicyInfo(default="refusal", per_category={"violence": "category"})
    risky = bundle.with_manifest(replace(bundle.manifest, category_search=search, policy=policy))
    assert risky.unproven_category_answers() == ["violence"]
    proven = risky.with_manifest(replace(risky.manifest, category_search={**search, "beats_unsteered": True}))
    refusal_only = risky.with_manifest(replace(risky.manifest, policy=PolicyInfo()))
    assert proven.unproven_category_answers() == [] and refusal_only.unproven_category_answers() == []
    for b, warned in ((risky, True), (refusal_only, False)):
        with structlog.testing.capture_logs() as logs:
            service = SteerService(host, b, SteerConfig(max_batch_size=2)).start()
        service.close()
        found = [e for e in logs if e["event"] == "category answers not safer than unsteered ones"]
        assert bool(found) == warned
        if warned:
            assert found[0]["categories"] == ["violence"] and found[0]["log_level"] == "warning"

"""The classifier over a real gRPC channel: verdicts, cache, batching, limits and status codes.

A real in-process server on port 0 runs a core on the tiny random Llama,
loaded with only ``probe_layer + 1`` layers (early exit). The core is
instrumented: its forward pass can be held at a gate (to build up concurrent
requests deterministically), made to fail, and it records which keys each
batch computed.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client import REGISTRY

from classifier_service.cache import MemoryCache
from classifier_service.core import ClassifierCore, CoreConfig
from classifier_service.server import SERVICE_NAME, create_server
from classifier_service.servicer import ClassifierServicer
from steerguard.bundle import Bundle
from steerguard.grpc_common.certs import write_test_certs
from steerguard.grpc_common.server import GrpcServer, ServerOptions
from steerguard.model.chat import normalise_request
from steerguard.model.host import Batch, ModelHost
from steerguard.v1 import classifier_pb2, classifier_pb2_grpc, common_pb2

MAX_TOKENS = 96
MAX_TOTAL_TOKENS = 400
MAX_BATCH_REQUESTS = 4
Req = classifier_pb2.ClassifyRequest


class InstrumentedCore(ClassifierCore):
    """A core whose forward pass can be held, failed, and observed."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.fail = False
        self.computed: list[list[str]] = []

    def _run_batch(self, jobs: list[Any]) -> list[Any]:
        self.entered.set()
        assert self.gate.wait(10)
        if self.fail:
            raise RuntimeError("secret detail: /etc/passwd")
        self.computed.append([job.key for job in jobs])
        return super()._run_batch(jobs)

    def reset(self) -> None:
        self.gate.set()
        self.entered.clear()
        self.fail = False
        self.computed.clear()


def unique(text: str = "How do I bake bread") -> str:
    return f"{text} #{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def probe_host(tiny_model_dir: Path, tiny_bundle: Bundle) -> ModelHost:
    return ModelHost.load(tiny_model_dir, max_layers=tiny_bundle.probe_layer + 1)


@pytest.fixture(scope="module")
def core(probe_host: ModelHost, tiny_bundle: Bundle) -> Iterator[InstrumentedCore]:
    config = CoreConfig(
        max_prompt_tokens=MAX_TOKENS,
        max_total_tokens=MAX_TOTAL_TOKENS,
        max_batch_size=4,
        max_batch_wait_ms=5.0,
        backend="torch",  # verdicts are compared with PyTorch forwards to 1e-5 (OpenVINO: its own tests)
    )
    c = InstrumentedCore(probe_host, tiny_bundle, MemoryCache(max_entries=1000, ttl_seconds=300), config)
    yield c
    c.close()


def serve(
    core: ClassifierCore | None, options: ServerOptions | None = None
) -> tuple[GrpcServer, ClassifierServicer]:
    servicer = ClassifierServicer(core, max_batch_requests=MAX_BATCH_REQUESTS)
    server = create_server("127.0.0.1:0", servicer, options).start()
    if core is not None:
        server.set_serving()
    return server, servicer


@pytest.fixture(scope="module")
def server(core: InstrumentedCore) -> Iterator[GrpcServer]:
    srv, _ = serve(core)
    yield srv
    srv.stop(0)


@pytest.fixture()
def channel(server: GrpcServer, core: InstrumentedCore) -> Iterator[grpc.Channel]:
    core.reset()
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        yield ch
    core.reset()


@pytest.fixture()
def stub(channel: grpc.Channel) -> classifier_pb2_grpc.ClassifierStub:
    return classifier_pb2_grpc.ClassifierStub(channel)


def status_of(call: Any, *args: Any, **kwargs: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as err:
        call(*args, **kwargs)
    return err.value.code(), err.value.details()


# --- verdicts -------------------------------------------------------------------------


def test_verdict_matches_the_probe_on_a_full_forward(
    stub: Any, tiny_host: ModelHost, tiny_bundle: Bundle
) -> None:
    prompt = unique()
    v = stub.Classify(Req(prompt=prompt))
    batch = tiny_host.encode([normalise_request(prompt)])
    with torch.inference_mode():
        full = tiny_host.model(**vars(batch), output_hidden_states=True).hidden_states
    expected = tiny_bundle.score(full[tiny_bundle.probe_layer + 1][:, -1, :])
    assert v.score == pytest.approx(float(expected.unsafe[0]), abs=1e-5)
    assert v.bundle_id == tiny_bundle.bundle_id and v.threshold == pytest.approx(tiny_bundle.threshold)
    assert set(v.category_scores) == set(tiny_bundle.categories)
    assert sum(v.category_scores.values()) == pytest.approx(1.0, abs=1e-5)
    assert v.unsafe == (v.score >= v.threshold) and (v.category != "") == v.unsafe
    assert not v.cached


def test_second_call_is_cached_and_threshold_applies_to_cached_scores(
    stub: Any, core: InstrumentedCore
) -> None:
    prompt = unique()
    first = stub.Classify(Req(prompt=prompt))
    again = stub.Classify(Req(prompt=prompt))
    assert again.cached and again.score == first.score
    low = stub.Classify(Req(prompt=prompt, threshold=max(first.score - 0.01, 1e-3)))
    high = stub.Classify(Req(prompt=prompt, threshold=min(first.score + 0.01, 0.999)))
    assert low.cached and low.unsafe and low.category
    assert high.cached and not high.unsafe and high.category == ""
    assert len(core.computed) == 1


def test_prompt_and_equivalent_messages_share_a_cache_entry(stub: Any) -> None:
    prompt = unique()
    stub.Classify(Req(prompt=prompt))
    as_messages = stub.Classify(Req(messages=[common_pb2.ChatMessage(role="user", content=prompt)]))
    assert as_messages.cached


def test_batch_keeps_order_and_computes_duplicates_once(stub: Any, core: InstrumentedCore) -> None:
    a, b = unique("alpha"), unique("beta")
    resp = stub.ClassifyBatch(
        classifier_pb2.ClassifyBatchRequest(
            requests=[Req(prompt=a), Req(prompt=b), Req(prompt=a, threshold=0.01)]
        )
    )
    v = resp.verdicts
    assert len(v) == 3
    assert v[0].score == v[2].score and v[0].score != v[1].score
    assert v[2].unsafe and v[2].threshold == pytest.approx(0.01)
    assert v[0].score == stub.Classify(Req(prompt=a)).score
    assert sum(len(keys) for keys in core.computed) == 2


# --- bad input -------------------------------------------------------------------------

TOO_LONG = "word " * (MAX_TOTAL_TOKENS + 10)
BAD_REQUESTS = [
    (Req(), "prompt is empty"),
    (Req(prompt="   "), "prompt is empty"),
    (Req(prompt="x", messages=[common_pb2.ChatMessage(role="user", content="y")]), "not both"),
    (Req(messages=[common_pb2.ChatMessage(role="wizard", content="y")]), "messages[0].role must be one of"),
    (Req(messages=[common_pb2.ChatMessage(role="user", content="")]), "last user message is empty"),
    (Req(messages=[common_pb2.ChatMessage(role="assistant", content="y")]), "last message must have role"),
    (Req(prompt="x", threshold=1.5), "threshold must be in (0, 1)"),
    (Req(prompt="x", threshold=0.0), "threshold must be in (0, 1)"),
    (Req(prompt="x\x00y"), "NUL character"),
]


@pytest.mark.parametrize(("request_", "reason"), BAD_REQUESTS, ids=[r for _, r in BAD_REQUESTS])
def test_bad_requests_are_invalid_argument_with_a_reason(stub: Any, request_: Any, reason: str) -> None:
    code, details = status_of(stub.Classify, request_)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert reason in details


def test_invalid_utf8_is_invalid_argument(channel: grpc.Channel) -> None:
    raw = channel.unary_unary(
        f"/{SERVICE_NAME}/Classify", request_serializer=lambda b: b, response_deserializer=lambda b: b
    )
    code, details = status_of(raw, b"\x0a\x02\xff\xfe")
    assert (code, details) == (grpc.StatusCode.INVALID_ARGUMENT, "prompt is not valid UTF-8")
    message = (
        common_pb2.ChatMessage(role="user", content="é").SerializeToString().replace(b"\xc3\xa9", b"\xc3\x28")
    )
    code, details = status_of(raw, b"\x12" + bytes([len(message)]) + message)
    assert (code, details) == (grpc.StatusCode.INVALID_ARGUMENT, "messages[0].content is not valid UTF-8")
    code, details = status_of(raw, b"\xff\xff\xff\xff")
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "not a valid" in details
    raw_batch = channel.unary_unary(
        f"/{SERVICE_NAME}/ClassifyBatch", request_serializer=lambda b: b, response_deserializer=lambda b: b
    )
    inner = b"\x0a\x01\xff"
    code, details = status_of(raw_batch, b"\x0a\x03\x0a\x01a" + b"\x0a" + bytes([len(inner)]) + inner)
    assert (code, details) == (grpc.StatusCode.INVALID_ARGUMENT, "requests[1].prompt is not valid UTF-8")


def test_bad_batches_are_invalid_argument(stub: Any, core: InstrumentedCore) -> None:
    batch = classifier_pb2.ClassifyBatchRequest
    code, details = status_of(
        stub.ClassifyBatch, batch(requests=[Req(prompt=unique())] * (MAX_BATCH_REQUESTS + 1))
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details == f"batch has {MAX_BATCH_REQUESTS + 1} requests, over the limit of {MAX_BATCH_REQUESTS}"
    code, details = status_of(stub.ClassifyBatch, batch())
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "requests is empty" in details
    code, details = status_of(stub.ClassifyBatch, batch(requests=[Req(prompt="ok"), Req()]))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("requests[1]: prompt is empty")
    code, details = status_of(
        stub.ClassifyBatch, batch(requests=[Req(prompt=unique()), Req(prompt=TOO_LONG)])
    )
    assert code == grpc.StatusCode.OUT_OF_RANGE and details.startswith(
        "requests[1]: the conversation is over"
    )
    assert core.computed == []  # an invalid batch queues nothing


def test_a_prompt_longer_than_the_window_is_judged_in_windows(stub: Any, core: InstrumentedCore) -> None:
    """Any length up to the hard cap is judged: padding a request with filler is no bypass."""
    long_prompt = unique("word " * (3 * MAX_TOKENS))
    verdict = stub.Classify(Req(prompt=long_prompt), timeout=30)
    assert 0.0 <= verdict.score <= 1.0
    views = [key for batch in core.computed for key in batch]
    assert len(views) >= 3  # the tail and the windows, each read by the model
    code, details = status_of(stub.Classify, Req(prompt=TOO_LONG))
    assert code == grpc.StatusCode.OUT_OF_RANGE
    assert details == f"the conversation is over the limit of {MAX_TOTAL_TOKENS} tokens"


def test_message_over_the_size_limit_is_a_client_error(core: InstrumentedCore) -> None:
    srv, _ = serve(core, ServerOptions(max_message_bytes=2048))
    try:
        with grpc.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
            stub = classifier_pb2_grpc.ClassifierStub(ch)
            code, _ = status_of(stub.Classify, Req(prompt="x" * 4096))
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        srv.stop(0)


def test_internal_errors_are_generic(stub: Any, core: InstrumentedCore) -> None:
    core.fail = True
    code, details = status_of(stub.Classify, Req(prompt=unique()))
    assert (code, details) == (grpc.StatusCode.INTERNAL, "internal error")
    core.fail = False
    assert stub.Classify(Req(prompt=unique())).bundle_id  # the worker survived


# --- batching, single-flight, deadlines ------------------------------------------------------


def _hold_worker(stub: Any, core: InstrumentedCore) -> Any:
    """Occupy the worker with one request so later ones queue up."""
    core.gate.clear()
    blocker = stub.Classify.future(Req(prompt=unique("blocker")))
    assert core.entered.wait(5)
    return blocker


def test_concurrent_requests_share_forward_passes(stub: Any, core: InstrumentedCore) -> None:
    blocker = _hold_worker(stub, core)
    calls = [stub.Classify.future(Req(prompt=unique())) for _ in range(8)]
    deadline = time.monotonic() + 5
    while core.batcher.queued < 8 and time.monotonic() < deadline:
        time.sleep(0.01)
    core.gate.set()
    assert all(c.result(timeout=10).bundle_id for c in [blocker, *calls])
    sizes = [len(keys) for keys in core.computed]
    assert sizes == [1, 4, 4]  # max_batch_size=4


def test_identical_concurrent_misses_compute_once(stub: Any, core: InstrumentedCore) -> None:
    blocker = _hold_worker(stub, core)
    prompt = unique()
    calls = [stub.Classify.future(Req(prompt=prompt)) for _ in range(6)]
    time.sleep(0.3)  # all six are in the server, waiting on one flight
    core.gate.set()
    verdicts = [c.result(timeout=10) for c in calls]
    blocker.result(timeout=10)
    assert len({v.score for v in verdicts}) == 1
    assert [len(keys) for keys in core.computed] == [1, 1]


class _SlowWriteCache(MemoryCache):
    """A cache whose writes wait for ``release``: the window between an answer and its cache entry."""

    def __init__(self) -> None:
        super().__init__(max_entries=100, ttl_seconds=300)
        self.release = threading.Event()
        self.writing = threading.Event()

    def set_many(self, items: Any) -> None:
        self.writing.set()
        assert self.release.wait(10)
        super().set_many(items)


def test_a_repeat_before_the_cache_write_lands_joins_the_answered_flight(
    probe_host: ModelHost, tiny_bundle: Bundle
) -> None:
    # The cache is written after the answers go out; a repeat in that window is a hit, not a recompute.
    cache = _SlowWriteCache()
    c = InstrumentedCore(probe_host, tiny_bundle, cache, CoreConfig(max_batch_wait_ms=1.0))
    try:
        conv = normalise_request(unique("repeat"))
        (first,) = c.classify([conv])
        assert cache.writing.wait(5) and not first.cached
        (again,) = c.classify([conv])
        assert again.cached and again.score == first.score and len(c.computed) == 1
        cache.release.set()
        deadline = time.monotonic() + 5
        while c._flights and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not c._flights  # the flight ends once its verdict is cached
        (third,) = c.classify([conv])
        assert third.cached and len(c.computed) == 1
    finally:
        cache.release.set()
        c.close()


def test_deadline_is_honoured_and_abandoned_work_is_dropped(stub: Any, core: InstrumentedCore) -> None:
    blocker = _hold_worker(stub, core)
    late = unique("late")
    started = time.perf_counter()
    code, _ = status_of(stub.Classify, Req(prompt=late), timeout=0.3)
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.perf_counter() - started < 2.0
    time.sleep(0.2)  # the server notices the client is gone and cancels the queued job
    core.gate.set()
    blocker.result(timeout=10)
    assert stub.Classify(Req(prompt=unique())).bundle_id
    computed = [k for keys in core.computed for k in keys]
    assert core.key(normalise_request(late)) not in computed


# --- health, reflection, auth, TLS, shutdown -----------------------------------------------------


def test_health_and_reflection(channel: grpc.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for name in ("", SERVICE_NAME):
        got = health.Check(health_pb2.HealthCheckRequest(service=name))
        assert got.status == health_pb2.HealthCheckResponse.SERVING
    refl = reflection_pb2_grpc.ServerReflectionStub(channel)
    answer = next(
        iter(refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
    )
    names = {s.name for s in answer.list_services_response.service}
    assert {SERVICE_NAME, "grpc.health.v1.Health"} <= names


def test_not_serving_and_unavailable_until_loaded(core: InstrumentedCore) -> None:
    srv, servicer = serve(None)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
            health = health_pb2_grpc.HealthStub(ch)
            check = health_pb2.HealthCheckRequest(service=SERVICE_NAME)
            assert health.Check(check).status == health_pb2.HealthCheckResponse.NOT_SERVING
            stub = classifier_pb2_grpc.ClassifierStub(ch)
            assert status_of(stub.Classify, Req(prompt="hi"))[0] == grpc.StatusCode.UNAVAILABLE
            servicer.attach(core)
            srv.set_serving()
            assert health.Check(check).status == health_pb2.HealthCheckResponse.SERVING
            assert stub.Classify(Req(prompt=unique())).bundle_id
    finally:
        srv.stop(0)


def test_bearer_token_is_required(core: InstrumentedCore) -> None:
    srv, _ = serve(core, ServerOptions(auth_token="s3cret"))
    try:
        with grpc.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
            stub = classifier_pb2_grpc.ClassifierStub(ch)
            for metadata in [(), (("authorization", "Bearer wrong"),)]:
                code, _ = status_of(stub.Classify, Req(prompt="hi"), metadata=metadata)
                assert code == grpc.StatusCode.UNAUTHENTICATED
            ok = stub.Classify(Req(prompt=unique()), metadata=(("authorization", "Bearer s3cret"),))
            assert ok.bundle_id
            health = health_pb2_grpc.HealthStub(ch)  # probes carry no token
            assert (
                health.Check(health_pb2.HealthCheckRequest()).status == health_pb2.HealthCheckResponse.SERVING
            )
    finally:
        srv.stop(0)


def test_mutual_tls(core: InstrumentedCore, tmp_path: Path) -> None:
    certs = write_test_certs(tmp_path)
    options = ServerOptions(
        tls_cert=str(certs.server_cert), tls_key=str(certs.server_key), tls_client_ca=str(certs.ca)
    )
    srv, _ = serve(core, options)
    ca = certs.ca.read_bytes()
    target = f"localhost:{srv.port}"
    try:
        anonymous = grpc.ssl_channel_credentials(root_certificates=ca)
        with grpc.secure_channel(target, anonymous) as ch:
            code, _ = status_of(classifier_pb2_grpc.ClassifierStub(ch).Classify, Req(prompt="hi"), timeout=5)
            assert code == grpc.StatusCode.UNAVAILABLE
        client = grpc.ssl_channel_credentials(
            root_certificates=ca,
            private_key=certs.client_key.read_bytes(),
            certificate_chain=certs.client_cert.read_bytes(),
        )
        with grpc.secure_channel(target, client) as ch:
            assert classifier_pb2_grpc.ClassifierStub(ch).Classify(Req(prompt=unique()), timeout=5).bundle_id
    finally:
        srv.stop(0)


def test_stop_drains_in_flight_requests(core: InstrumentedCore) -> None:
    """New RPCs are refused at once; the one in flight still gets its verdict."""
    core.reset()
    srv, _ = serve(core)
    with grpc.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
        stub = classifier_pb2_grpc.ClassifierStub(ch)
        core.gate.clear()
        in_flight = stub.Classify.future(Req(prompt=unique()))
        assert core.entered.wait(5)
        stopper = threading.Thread(target=srv.stop, args=(5.0,))
        stopper.start()
        time.sleep(0.2)
        assert status_of(stub.Classify, Req(prompt=unique()), timeout=2)[0] == grpc.StatusCode.UNAVAILABLE
        core.gate.set()
        assert in_flight.result(timeout=10).bundle_id  # finished, not cut off
        stopper.join(10)
    core.reset()


# --- metrics ---------------------------------------------------------------------------------


def _sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_metrics_are_recorded(stub: Any) -> None:
    before = {
        "hits": _sample("steerguard_classifier_cache_hits_total"),
        "misses": _sample("steerguard_classifier_cache_misses_total"),
        "latency": _sample("steerguard_classifier_request_seconds_count", method="Classify", code="OK"),
        "invalid": _sample(
            "steerguard_classifier_request_seconds_count", method="Classify", code="INVALID_ARGUMENT"
        ),
        "batches": _sample("steerguard_classifier_batch_size_count"),
    }
    prompt = unique()
    stub.Classify(Req(prompt=prompt))
    stub.Classify(Req(prompt=prompt))
    status_of(stub.Classify, Req())
    assert _sample("steerguard_classifier_cache_hits_total") == before["hits"] + 1
    assert _sample("steerguard_classifier_cache_misses_total") == before["misses"] + 1
    assert _sample("steerguard_classifier_batch_size_count") == before["batches"] + 1
    latency = _sample("steerguard_classifier_request_seconds_count", method="Classify", code="OK")
    assert latency == before["latency"] + 2
    invalid = _sample(
        "steerguard_classifier_request_seconds_count", method="Classify", code="INVALID_ARGUMENT"
    )
    assert invalid == before["invalid"] + 1
    verdicts = sum(
        s.value
        for m in REGISTRY.collect()
        if m.name == "steerguard_classifier_verdicts"
        for s in m.samples
        if s.name.endswith("_total")
    )
    assert verdicts >= 2


def test_parallel_clients_all_get_answers(server: GrpcServer) -> None:
    prompts = [unique() for _ in range(6)] * 3

    def one(p: str) -> float:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as ch:
            return float(classifier_pb2_grpc.ClassifierStub(ch).Classify(Req(prompt=p), timeout=20).score)

    with ThreadPoolExecutor(8) as pool:
        scores = list(pool.map(one, prompts))
    assert scores[:6] == scores[6:12] == scores[12:]


def _unused(_: Batch) -> None:  # keeps the Batch import honest for type checkers
    return None


def test_verdicts_name_the_language_and_whether_the_bundle_covers_it(stub: Any) -> None:
    french = stub.Classify(
        Req(prompt=unique("Comment puis-je faire du pain à la maison ce soir ?")), timeout=30
    )
    assert french.language == "fr" and not french.language_calibrated
    english = stub.Classify(Req(prompt=unique("How can I bake a loaf of bread at home tonight?")), timeout=30)
    assert english.language == "en" and english.language_calibrated
    short = stub.Classify(Req(prompt=unique("ok")), timeout=30)
    assert short.language == "und" and short.language_calibrated

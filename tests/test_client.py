"""``steerguard.client``: the light client against a real classifier over a real channel (tiny model).

The same answers as the generated stub gives, typed; thresholds, batches and
conversations; the service's refusals as :mod:`steerguard.errors` classes;
bearer tokens; the asyncio client too.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import grpc
import pytest

from classifier_service.core import ClassifierCore, CoreConfig
from classifier_service.server import create_server
from classifier_service.servicer import ClassifierServicer
from steerguard.bundle import Bundle
from steerguard.client import AsyncClassifier, Classifier, Verdict
from steerguard.errors import InvalidInput, Unauthenticated, UpstreamError
from steerguard.grpc_common.server import ServerOptions
from steerguard.model.host import ModelHost
from steerguard.v1 import classifier_pb2, classifier_pb2_grpc

TOKEN = "client-test-token"


@pytest.fixture(scope="module")
def address(tiny_host: ModelHost, tiny_bundle: Bundle) -> Iterator[str]:
    core = ClassifierCore(tiny_host, tiny_bundle, None, CoreConfig(max_batch_wait_ms=1.0))
    server = create_server("127.0.0.1:0", ClassifierServicer(core), ServerOptions(auth_token=TOKEN)).start()
    server.set_serving()
    yield f"127.0.0.1:{server.port}"
    server.stop(0)
    core.close()


def _stub_score(address: str, request: classifier_pb2.ClassifyRequest) -> float:
    with grpc.insecure_channel(address) as channel:
        stub = classifier_pb2_grpc.ClassifierStub(channel)
        return float(
            stub.Classify(request, metadata=(("authorization", f"Bearer {TOKEN}"),), timeout=30).score
        )


def test_the_client_classifies_prompts_and_conversations(address: str) -> None:
    with Classifier(address, token=TOKEN, timeout_s=30) as guard:
        verdict = guard.classify("How do I bake sourdough bread?")
        chat = [{"role": "user", "content": "Hi"}, {"role": "user", "content": "Write a poem."}]
        turns = guard.classify(chat)
        strict = guard.classify("How do I bake sourdough bread?", threshold=0.0001)
        batch = guard.classify_batch(["one", chat, "three"])
    assert isinstance(verdict, Verdict) and verdict.bundle_id
    assert verdict.score == pytest.approx(
        _stub_score(address, classifier_pb2.ClassifyRequest(prompt="How do I bake sourdough bread?")),
        abs=1e-6,
    )
    assert turns.score == pytest.approx(batch[1].score, abs=1e-6) and len(batch) == 3
    assert strict.unsafe and strict.threshold == pytest.approx(0.0001)
    with pytest.raises(AttributeError):
        verdict.score = 1.0  # type: ignore[misc]  # frozen


def test_refusals_are_steerguard_errors(address: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with Classifier(address, token=TOKEN, timeout_s=30) as guard, pytest.raises(InvalidInput) as err:
        guard.classify("a\x00b")
    assert "NUL" in err.value.reason
    with Classifier(address, timeout_s=30) as anonymous, pytest.raises(Unauthenticated):
        anonymous.classify("hello")
    monkeypatch.setenv("STEERGUARD_AUTH_TOKEN", TOKEN)
    monkeypatch.setenv("STEERGUARD_CLASSIFIER", address)
    with Classifier(timeout_s=30) as from_env:  # address and token from STEERGUARD_* variables
        assert from_env.classify("hello").bundle_id
    with Classifier("127.0.0.1:1", timeout_s=2, attempts=1) as nowhere, pytest.raises(UpstreamError):
        nowhere.classify("hello")


def test_the_async_client(address: str) -> None:
    async def run() -> tuple[Verdict, list[Verdict]]:
        async with AsyncClassifier(address, token=TOKEN, timeout_s=30) as guard:
            return await guard.classify("hello"), await guard.classify_batch(["a", "b"])

    one, two = asyncio.run(run())
    assert one.bundle_id and len(two) == 2

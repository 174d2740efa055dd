"""``ClassifyStream``: an answer judged chunk by chunk, its keys and values kept (tiny random Llama).

A stream must read what the windowed ``Classify`` reads (the same scores, from
plain forward passes), cost each chunk only its own tokens, hold at most one
window of keys and values whatever the answer's length, and free itself when
the call ends; bad chunks are client errors.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from serving import serve_core

from classifier_service import metrics
from classifier_service.answer_stream import AnswerStream, Locks
from classifier_service.core import ClassifierCore, CoreConfig
from classifier_service.server import SERVICE_NAME, create_server
from classifier_service.servicer import ClassifierServicer
from devstack.models import make_random_bundle
from steerguard.bundle import Bundle
from steerguard.model.chat import normalise_request
from steerguard.model.host import ModelHost
from steerguard.passages import ender_ids, text_ids
from steerguard.responses import ANSWER_WINDOW_TOKENS, Reply, answer_windows, position_scores
from steerguard.v1 import classifier_pb2, classifier_pb2_grpc

Chunk = classifier_pb2.AnswerChunk
PROMPT = "Tell me about lighthouses."


@pytest.fixture(scope="module")
def answer_bundle(tiny_host: ModelHost, tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    return make_random_bundle(tiny_host, tmp_path_factory.mktemp("stream-bundle"), response=True, seed=5)


def _answer(words: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    vocab = [
        "the",
        "keeper",
        "lit",
        "the",
        "lamp.",
        "Ships",
        "passed",
        "at",
        "night;",
        "storms",
        "came!",
        "Did",
        "he",
        "sleep?",
        "No.\n",
    ]
    return uuid.uuid4().hex + " " + " ".join(rng.choice(vocab) for _ in range(words))


def _pieces(text: str, seed: int = 1) -> list[str]:
    rng, out, i = random.Random(seed), [], 0
    while i < len(text):
        n = rng.randint(1, 60)
        out.append(text[i : i + n])
        i += n
    return out


def _windowed(host: ModelHost, bundle: Bundle, answer: str) -> float:
    reads = answer_windows(
        host, Reply(normalise_request(PROMPT), text_ids(host, answer)), ender_ids(host.tokenizer)
    )
    return max(max(s) for s in position_scores(host, bundle, reads))


def _stream(host: ModelHost, bundle: Bundle) -> AnswerStream:
    locks = Locks(threading.Lock(), threading.Lock())
    return AnswerStream(host, bundle, normalise_request(PROMPT), ender_ids(host.tokenizer), locks)


def test_a_stream_reads_what_the_windows_read_and_each_token_about_once(
    tiny_host: ModelHost, answer_bundle: Bundle
) -> None:
    answer = _answer(1700)
    n = len(text_ids(tiny_host, answer))
    assert n > 2 * ANSWER_WINDOW_TOKENS
    whole = _stream(tiny_host, answer_bundle)
    assert whole.feed(answer) == pytest.approx(_windowed(tiny_host, answer_bundle, answer), abs=1e-5)
    pieces = _stream(tiny_host, answer_bundle)
    scores, longest = [], 0
    for piece in _pieces(answer):
        scores.append(pieces.feed(piece))
        longest = max(longest, pieces._cache.get_seq_length())
    assert scores == sorted(scores)  # once unsafe, unsafe: the score never falls
    # every position the windows read, plus the last token at every check
    assert scores[-1] >= whole.score - 1e-6
    assert pieces.windows == whole.windows >= 3
    # linear: overlaps and re-read last tokens only
    assert n <= pieces.tokens_read <= 1.4 * n + 2 * len(scores)
    assert longest <= len(pieces.prefix) + ANSWER_WINDOW_TOKENS  # bounded memory


def test_a_stream_after_a_follow_up_reads_the_lead_first_and_scores_what_the_windows_score(
    tiny_host: ModelHost, answer_bundle: Bundle
) -> None:
    """In the request view, a long answer after "Go on." streams through the same windows as
    ``Classify`` reads: the assistant's earlier turn first (never scored), then the answer."""
    from dataclasses import replace

    from steerguard.manifest import VIEW_REQUEST
    from steerguard.responses import reply

    info = answer_bundle.manifest.response
    assert info is not None
    bundle = Bundle(
        replace(answer_bundle.manifest, response=replace(info, view=VIEW_REQUEST)), answer_bundle.tensors
    )
    turns = [("user", PROMPT), ("assistant", _answer(120, seed=3)), ("user", "Go on.")]
    conv = normalise_request(messages=[{"role": r, "content": c} for r, c in turns])
    answer = _answer(1500, seed=4)
    got = reply(tiny_host, conv, answer, VIEW_REQUEST)
    assert got.skip > 0 and got.answer_tokens > 2 * ANSWER_WINDOW_TOKENS
    reads = answer_windows(tiny_host, got, ender_ids(tiny_host.tokenizer))
    assert min(reads[0].positions) >= got.skip
    windowed = max(max(s) for s in position_scores(tiny_host, bundle, reads))
    locks = Locks(threading.Lock(), threading.Lock())
    stream = AnswerStream(tiny_host, bundle, conv, ender_ids(tiny_host.tokenizer), locks)
    assert stream.prefix == tiny_host.token_ids(normalise_request(PROMPT))  # the request alone
    assert stream.feed(answer) == pytest.approx(windowed, abs=1e-5)
    pieces = AnswerStream(tiny_host, bundle, conv, ender_ids(tiny_host.tokenizer), locks)
    for piece in _pieces(answer):
        last = pieces.feed(piece)
    assert last >= stream.score - 1e-6 and pieces.windows == stream.windows >= 3


@pytest.mark.parametrize("answer", ["\n", "\n\n", " ", "x"])
def test_a_tiny_answer_after_a_lead_is_scored_the_same_both_ways(
    tiny_host: ModelHost, answer_bundle: Bundle, answer: str
) -> None:
    """Even an answer that merges into the lead's last token (a lone line break) is scored."""
    from dataclasses import replace

    from steerguard.manifest import VIEW_REQUEST
    from steerguard.responses import reply

    info = answer_bundle.manifest.response
    assert info is not None
    bundle = Bundle(
        replace(answer_bundle.manifest, response=replace(info, view=VIEW_REQUEST)), answer_bundle.tensors
    )
    turns = [("user", PROMPT), ("assistant", "The keeper lit the lamp.\n"), ("user", "Go on.")]
    conv = normalise_request(messages=[{"role": r, "content": c} for r, c in turns])
    reads = answer_windows(
        tiny_host, reply(tiny_host, conv, answer, VIEW_REQUEST), ender_ids(tiny_host.tokenizer)
    )
    assert all(r.positions for r in reads)
    windowed = max(max(s) for s in position_scores(tiny_host, bundle, reads))
    stream = AnswerStream(
        tiny_host, bundle, conv, ender_ids(tiny_host.tokenizer), Locks(threading.Lock(), threading.Lock())
    )
    assert stream.feed(answer) == pytest.approx(windowed, abs=1e-5)


_serve = serve_core


@pytest.fixture(scope="module")
def core(tiny_host: ModelHost, answer_bundle: Bundle) -> ClassifierCore:
    return ClassifierCore(tiny_host, answer_bundle, None, CoreConfig(max_batch_wait_ms=5.0, max_streams=2))


@pytest.fixture(scope="module")
def stub(core: ClassifierCore) -> Iterator[classifier_pb2_grpc.ClassifierStub]:
    yield from _serve(core)


def _chunks(answer: str, **first: Any) -> list[classifier_pb2.AnswerChunk]:
    pieces = _pieces(answer)
    return [Chunk(text=pieces[0], **first), *(Chunk(text=p) for p in pieces[1:])]


def test_classify_stream_over_grpc_matches_classify(stub: Any, answer_bundle: Bundle) -> None:
    answer = _answer(200, seed=2)
    chunks = _chunks(answer, prompt=PROMPT)
    verdicts = list(stub.ClassifyStream(iter(chunks), timeout=60))
    assert len(verdicts) == len(chunks)
    whole = stub.Classify(classifier_pb2.ClassifyRequest(prompt=PROMPT, answer=answer), timeout=60)
    assert verdicts[-1].score >= whole.score - 1e-6
    (one,) = stub.ClassifyStream(iter([Chunk(prompt=PROMPT, text=answer)]), timeout=60)
    assert one.score == pytest.approx(whole.score, abs=1e-5)
    strict = list(stub.ClassifyStream(iter(_chunks(answer, prompt=PROMPT, threshold=0.01)), timeout=60))
    assert strict[-1].unsafe and strict[-1].threshold == pytest.approx(0.01)
    assert all(v.bundle_id == answer_bundle.bundle_id for v in verdicts)


@pytest.mark.parametrize(
    ("chunks", "reason"),
    [
        ([Chunk(text="hi")], "prompt is empty: give a non-empty prompt or messages"),
        ([Chunk(prompt="q"), Chunk(prompt="again")], "only a stream's first chunk carries"),
        ([Chunk(prompt="q"), Chunk(text="a\x00b")], "text contains a NUL character"),
    ],
)
def test_bad_chunks_are_invalid_argument(stub: Any, chunks: list[Any], reason: str) -> None:
    with pytest.raises(grpc.RpcError) as err:
        list(stub.ClassifyStream(iter(chunks), timeout=30))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith(reason)


def test_a_chunk_that_is_not_utf8_is_invalid_argument(core: ClassifierCore) -> None:
    for stub in _serve_raw(core):
        with pytest.raises(grpc.RpcError) as err:
            list(stub(iter([b"\x0a\x02hi", b"\x22\x02\xff\xfe"]), timeout=30))
        assert (err.value.code(), err.value.details()) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "text is not valid UTF-8",
        )


def _serve_raw(core: ClassifierCore) -> Iterator[Any]:
    server = create_server("127.0.0.1:0", ClassifierServicer(core)).start()
    server.set_serving()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            yield channel.stream_stream(
                f"/{SERVICE_NAME}/ClassifyStream",
                request_serializer=lambda b: b,
                response_deserializer=lambda b: b,
            )
    finally:
        server.stop(0)


def _open_streams() -> float:
    return float(metrics.OPEN_STREAMS._value.get())


def _wait_for(condition: Any, seconds: float = 10.0) -> bool:
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        if condition():
            return True
        time.sleep(0.05)
    return False


def test_streams_are_bounded_and_freed_on_cancel_and_deadline(stub: Any) -> None:
    """Two may be open (max_streams=2); a third is RESOURCE_EXHAUSTED; cancel and deadline free them."""
    held: list[Any] = []
    gates = [threading.Event(), threading.Event()]

    def waiting(gate: threading.Event) -> Iterator[Any]:
        yield Chunk(prompt=PROMPT, text="The lamp")
        gate.wait(30)

    before = _open_streams()
    cancelled = stub.ClassifyStream(waiting(gates[0]))
    timed = stub.ClassifyStream(waiting(gates[1]), timeout=2.0)
    held += [next(cancelled), next(timed)]
    assert _open_streams() == before + 2
    with pytest.raises(grpc.RpcError) as err:
        list(stub.ClassifyStream(iter([Chunk(prompt=PROMPT, text="x")]), timeout=30))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    cancelled.cancel()
    with pytest.raises(grpc.RpcError) as err:
        next(timed)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    for gate in gates:
        gate.set()
    assert _wait_for(lambda: _open_streams() == before), "streams freed after cancel and deadline"
    assert len(list(stub.ClassifyStream(iter([Chunk(prompt=PROMPT, text="ok")]), timeout=30))) == 1


def test_without_a_response_probe_each_chunk_judges_the_answer_so_far(
    tiny_host: ModelHost, tiny_bundle: Bundle
) -> None:
    core = ClassifierCore(tiny_host, tiny_bundle, None, CoreConfig(max_batch_wait_ms=5.0))
    for stub in _serve(core):
        pieces = ["Sure. ", "Here it ", "is."]
        chunks = [Chunk(prompt="Q?", text=pieces[0]), *(Chunk(text=p) for p in pieces[1:])]
        verdicts = list(stub.ClassifyStream(iter(chunks), timeout=60))
        so_far = [
            stub.Classify(classifier_pb2.ClassifyRequest(prompt="Q?", answer="".join(pieces[: i + 1]))).score
            for i in range(3)
        ]
        assert [v.score for v in verdicts] == pytest.approx(
            [max(so_far[: i + 1]) for i in range(3)], abs=1e-6
        )


def test_describe_bundle_names_the_bundle_served(stub: Any, answer_bundle: Bundle) -> None:
    from steerguard.v1 import common_pb2

    info = stub.DescribeBundle(common_pb2.DescribeBundleRequest(), timeout=10)
    assert info.bundle_id == answer_bundle.bundle_id and info.probe_layer == answer_bundle.probe_layer
    assert list(info.categories) == answer_bundle.categories

"""Answers judged by the response probe over a real gRPC channel (tiny random Llama).

The classifier judges ``ClassifyRequest.answer`` as the assistant's reply to
the conversation: every segment end of the answer scored by the bundle's
response heads (the higher of the two) on the state at the end, the mean of
the answer's last ``RECENT_TOKENS`` states and the state at the context's
last token, read after the conversation's chat framing. These
tests recompute that from a plain full forward pass, check that a long answer
is read in windows whose verdicts the cache keeps (so re-sending a growing
answer computes only what changed), and that bad answers are client errors.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
import torch
from serving import serve_core

from classifier_service.cache import MemoryCache
from classifier_service.core import ClassifierCore, CoreConfig
from classifier_service.server import SERVICE_NAME, create_server
from classifier_service.servicer import ClassifierServicer
from devstack.models import make_random_bundle
from steerguard.bundle import Bundle
from steerguard.model.chat import normalise_request
from steerguard.model.host import ModelHost
from steerguard.passages import ender_ids, segment_ends, text_ids
from steerguard.responses import ANSWER_WINDOW_TOKENS, RECENT_TOKENS, Reply, answer_windows
from steerguard.v1 import classifier_pb2, classifier_pb2_grpc, common_pb2

Req = classifier_pb2.ClassifyRequest
MAX_TOTAL_TOKENS = 6000


class CountingCore(ClassifierCore):
    """A core that records the jobs each batch computed."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.computed: list[Any] = []

    def _run_batch(self, jobs: list[Any]) -> list[Any]:
        self.computed.extend(jobs)
        return super()._run_batch(jobs)


@pytest.fixture(scope="module")
def answer_bundle(tiny_host: ModelHost, tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    return make_random_bundle(tiny_host, tmp_path_factory.mktemp("answer-bundle"), response=True, seed=3)


_serve = serve_core


@pytest.fixture(scope="module")
def core(tiny_host: ModelHost, answer_bundle: Bundle) -> CountingCore:
    config = CoreConfig(max_prompt_tokens=256, max_total_tokens=MAX_TOTAL_TOKENS, max_batch_wait_ms=5.0)
    return CountingCore(tiny_host, answer_bundle, MemoryCache(max_entries=1000, ttl_seconds=300), config)


@pytest.fixture(scope="module")
def stub(core: CountingCore) -> Iterator[classifier_pb2_grpc.ClassifierStub]:
    yield from _serve(core)


def _expected(host: ModelHost, bundle: Bundle, prompt: str, answer: str) -> float:
    """The highest segment-end score of ``answer`` after ``prompt``, from one full forward pass."""
    return _expected_after(host, bundle, normalise_request(prompt), answer)


def test_an_answer_is_judged_by_the_response_head(
    stub: Any, tiny_host: ModelHost, answer_bundle: Bundle
) -> None:
    prompt, answer = (
        "How do I bake bread?",
        f"Mix flour and water. Then wait; bake it hot! {uuid.uuid4().hex}",
    )
    verdict = stub.Classify(Req(prompt=prompt, answer=answer))
    assert verdict.score == pytest.approx(_expected(tiny_host, answer_bundle, prompt, answer), abs=1e-5)
    assert verdict.unsafe == (verdict.score >= answer_bundle.threshold)
    assert verdict.category == ""  # the category head reads requests, not answers
    prompt_only = stub.Classify(Req(prompt=prompt))
    assert prompt_only.score != verdict.score  # the answer, not the request, was judged


def test_a_long_answer_is_read_in_windows_and_a_growing_one_costs_only_its_new_part(
    stub: Any, core: CountingCore, tiny_host: ModelHost, answer_bundle: Bundle
) -> None:
    words = " ".join(f"step {i} of the recipe is plain." for i in range(400))
    answer = f"{uuid.uuid4().hex} {words}"
    ids = text_ids(tiny_host, answer)
    assert len(ids) > 3 * ANSWER_WINDOW_TOKENS
    core.computed.clear()
    verdict = stub.Classify(Req(prompt="Recipe?", answer=answer), timeout=60)
    reads = answer_windows(
        tiny_host, Reply(normalise_request("Recipe?"), ids), ender_ids(tiny_host.tokenizer)
    )
    assert len(core.computed) == len(reads) >= 4
    read_tokens = sum(len(job.answer.answer) for job in core.computed)
    assert read_tokens <= 2 * len(ids)  # linear: each token read at most twice
    owned = [p for r in reads for p in r.positions]
    assert len(owned) == len(segment_ends(ids, ender_ids(tiny_host.tokenizer)))  # every end read once
    direct = max(
        float(answer_bundle.response_score(s).max())
        for s in [_window_features(tiny_host, answer_bundle, r) for r in reads]
    )
    assert verdict.score == pytest.approx(direct, abs=1e-5)
    core.computed.clear()
    stub.Classify(Req(prompt="Recipe?", answer=answer + " And then it is done. Serve it warm."), timeout=60)
    assert 1 <= len(core.computed) <= 2  # earlier windows answered from the cache


def _window_features(host: ModelHost, bundle: Bundle, read: Any) -> torch.Tensor:
    from steerguard.responses import answer_features

    layer = bundle.manifest.response.layer  # type: ignore[union-attr]
    return answer_features(host, [read], [layer])[layer]


def test_bad_answers_are_client_errors(stub: Any, core: CountingCore) -> None:
    with pytest.raises(grpc.RpcError) as err:
        stub.Classify(Req(prompt="hi", answer="a\x00b"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details() == "answer contains a NUL character"
    with pytest.raises(grpc.RpcError) as err:
        stub.Classify(Req(prompt="hi", answer="word " * (MAX_TOTAL_TOKENS + 10)))
    assert err.value.code() == grpc.StatusCode.OUT_OF_RANGE
    assert err.value.details() == f"the answer is over the limit of {MAX_TOTAL_TOKENS} tokens"
    with pytest.raises(grpc.RpcError) as err:
        stub.ClassifyBatch(classifier_pb2.ClassifyBatchRequest(requests=[Req(prompt="a"), Req(answer="x")]))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith("requests[1]: prompt is empty")


def test_an_answer_that_is_not_utf8_is_invalid_argument(core: CountingCore) -> None:
    server = create_server("127.0.0.1:0", ClassifierServicer(core)).start()
    server.set_serving()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            raw = channel.unary_unary(
                f"/{SERVICE_NAME}/Classify", request_serializer=lambda b: b, response_deserializer=lambda b: b
            )
            with pytest.raises(grpc.RpcError) as err:
                raw(b"\x0a\x02hi" + b"\x22\x02\xff\xfe")  # prompt "hi", answer (field 4) not UTF-8
    finally:
        server.stop(0)
    assert (err.value.code(), err.value.details()) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "answer is not valid UTF-8",
    )


def test_without_a_response_probe_an_answer_is_read_as_a_request(
    tiny_host: ModelHost, tiny_bundle: Bundle
) -> None:
    """A bundle calibrated before response probes judges the answer as the prompt probe reads a request."""
    core = ClassifierCore(tiny_host, tiny_bundle, None, CoreConfig(max_batch_wait_ms=5.0))
    for stub in _serve(core):
        reply = "Sure. Here it is."
        verdict = stub.Classify(Req(prompt="Question?", answer=reply))
        turns = [
            common_pb2.ChatMessage(role=r, content=c) for r, c in (("user", "Question?"), ("user", reply))
        ]
        assert verdict.score == pytest.approx(stub.Classify(Req(messages=turns)).score, abs=1e-6)


def test_answer_windows_stay_within_the_context_budget(tiny_host: ModelHost) -> None:
    from steerguard.responses import CONTEXT_TOKENS

    conv = normalise_request(
        messages=[{"role": "system", "content": "Be kind."}, {"role": "user", "content": "why " * 2000}]
    )
    reads = answer_windows(
        tiny_host, Reply(conv, text_ids(tiny_host, "Because.")), ender_ids(tiny_host.tokenizer)
    )
    assert len(reads) == 1 and len(reads[0].prefix) <= CONTEXT_TOKENS
    assert tiny_host.tokenizer.decode(list(reads[0].prefix)).rstrip().endswith("assistant")


def test_a_bundle_fitted_on_two_states_is_served_as_it_was(answer_bundle: Bundle, tmp_path: Any) -> None:
    """Bundles from before the context's state carry one head on the first 2H columns."""
    from dataclasses import replace

    from steerguard.errors import BundleError
    from steerguard.responses import FEATURES_V1

    width = 2 * answer_bundle.tensors["probe.mean"].numel()
    tensors = {k: v for k, v in answer_bundle.tensors.items() if not k.startswith("response")}
    tensors |= {
        f"response.{t}": answer_bundle.tensors[f"response.{t}"][:width] for t in ("mean", "std", "weight")
    }
    tensors["response.bias"] = answer_bundle.tensors["response.bias"]
    info = replace(answer_bundle.manifest.response, features=FEATURES_V1, content_cut=None)  # type: ignore[arg-type]
    old = Bundle(replace(answer_bundle.manifest, response=info, bundle_id=""), tensors)
    old.save(tmp_path / "old")
    loaded = Bundle.load(tmp_path / "old")
    states = torch.randn(5, 3 * width // 2)
    z = (states[:, :width] - tensors["response.mean"]) / tensors["response.std"]
    direct = torch.sigmoid(z @ tensors["response.weight"] + tensors["response.bias"])
    torch.testing.assert_close(loaded.response_score(states), direct)
    # A bundle with both heads scores the higher of the two, each on all three states.
    t = answer_bundle.tensors
    heads = [
        torch.sigmoid(((states - t[f"{h}.mean"]) / t[f"{h}.std"]) @ t[f"{h}.weight"] + t[f"{h}.bias"])
        for h in ("response", "response_content")
    ]
    torch.testing.assert_close(answer_bundle.response_score(states), torch.maximum(*heads))
    assert not torch.equal(heads[0], heads[1])
    with pytest.raises(BundleError, match="unknown response features"):
        Bundle(replace(old.manifest, response=replace(info, features="end")), tensors).save(tmp_path / "bad")


def test_an_answer_in_a_chat_with_earlier_turns_is_judged_by_the_multi_turn_heads(
    tiny_host: ModelHost, answer_bundle: Bundle
) -> None:
    """A bundle with ``response_turns.*`` judges answers after earlier turns with those heads, in
    ``Classify`` and in ``ClassifyStream``; a single-turn answer keeps the first pair's score."""
    from dataclasses import replace

    info = answer_bundle.manifest.response
    assert info is not None
    tensors = dict(answer_bundle.tensors)
    for head in ("response", "response_content"):
        turns = head.replace("response", "response_turns")
        tensors |= {f"{turns}.{t}": tensors[f"{head}.{t}"].clone() for t in ("mean", "std", "weight")}
        tensors[f"{turns}.bias"] = tensors[f"{head}.bias"] + 50.0  # every position unsafe
    manifest = replace(
        answer_bundle.manifest, response=replace(info, multi_turn={"cut": 0.5, "content_cut": 0.5})
    )
    bundle = Bundle(manifest, tensors)
    core = ClassifierCore(tiny_host, bundle, MemoryCache(max_entries=100, ttl_seconds=300), CoreConfig())
    chat = [
        common_pb2.ChatMessage(role="user", content="How do I bake bread?"),
        common_pb2.ChatMessage(role="assistant", content="Mix flour and water."),
        common_pb2.ChatMessage(role="user", content="Go on."),
    ]
    answer = "Then knead it, let it rise and bake it hot."
    for stub in serve_core(core):
        single = stub.Classify(Req(prompt="Go on.", answer=answer))
        assert single.score == pytest.approx(_expected(tiny_host, answer_bundle, "Go on.", answer), abs=1e-5)
        later = stub.Classify(Req(messages=chat, answer=answer))
        assert later.unsafe and later.score > 0.99
        (streamed,) = stub.ClassifyStream(iter([classifier_pb2.AnswerChunk(messages=chat, text=answer)]))
        assert streamed.unsafe and streamed.score > 0.99


def test_an_answer_after_a_follow_up_is_read_after_the_request_it_continues(
    tiny_host: ModelHost, answer_bundle: Bundle
) -> None:
    """A bundle whose response view is ``request`` reads an answer after "Go on." as the rest of the
    reply to the request before it: that request alone (with the system prompt), the assistant's
    earlier turn read first and not scored, the first pair of heads. ``Classify`` and
    ``ClassifyStream`` agree with one plain forward pass over that text; a chat whose last turn is a
    request of its own is read after it alone; the same bundle in the chat view reads the chat."""
    from dataclasses import replace

    from steerguard.manifest import VIEW_REQUEST

    info = answer_bundle.manifest.response
    assert info is not None
    tensors = dict(answer_bundle.tensors)
    for head in ("response", "response_content"):  # turns heads that would flag everything: unused here
        turns = head.replace("response", "response_turns")
        tensors |= {f"{turns}.{t}": tensors[f"{head}.{t}"].clone() for t in ("mean", "std", "weight")}
        tensors[f"{turns}.bias"] = tensors[f"{head}.bias"] + 50.0
    turns_info = replace(info, multi_turn={"cut": 0.5, "content_cut": 0.5})
    request = Bundle(
        replace(answer_bundle.manifest, response=replace(turns_info, view=VIEW_REQUEST)), tensors
    )
    chat_view = Bundle(replace(answer_bundle.manifest, response=turns_info), tensors)
    earlier = "Mix flour, water and yeast.\nLet it rest."
    chat = [
        common_pb2.ChatMessage(role="system", content="Be brief."),
        common_pb2.ChatMessage(role="user", content="How do I bake bread at home?"),
        common_pb2.ChatMessage(role="assistant", content=earlier),
        common_pb2.ChatMessage(role="user", content="Go on."),
    ]
    answer = "Then knead it, let it rise and bake it hot."
    cache = MemoryCache(max_entries=100, ttl_seconds=300)
    core = ClassifierCore(tiny_host, request, cache, CoreConfig())
    prompt = normalise_request(
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "How do I bake bread at home?"},
        ]
    )
    want = _expected_after(tiny_host, answer_bundle, prompt, answer, earlier + "\n\n")
    for stub in serve_core(core):
        whole = stub.Classify(Req(messages=chat, answer=answer))
        assert whole.score == pytest.approx(want, abs=1e-5) and want < 0.99  # not the turns heads
        (streamed,) = stub.ClassifyStream(iter([classifier_pb2.AnswerChunk(messages=chat, text=answer)]))
        assert streamed.score == pytest.approx(want, abs=1e-5)
        new = [
            *chat[:3],
            common_pb2.ChatMessage(role="user", content="Which flour is best for a rye loaf, and why?"),
        ]
        alone = stub.Classify(Req(messages=new, answer=answer))
        asked = normalise_request(
            messages=[
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": new[-1].content},
            ]
        )
        assert alone.score == pytest.approx(
            _expected_after(tiny_host, answer_bundle, asked, answer), abs=1e-5
        )
    old = ClassifierCore(tiny_host, chat_view, MemoryCache(max_entries=100, ttl_seconds=300), CoreConfig())
    for stub in serve_core(old):
        assert stub.Classify(Req(messages=chat, answer=answer)).score > 0.99  # the turns heads


def test_an_answer_after_a_short_turn_the_rule_does_not_know_is_flagged_only_where_both_readings_flag(
    tiny_host: ModelHost, tmp_path: Any
) -> None:
    """``short_turns: both``: after "Walk me through it slowly." (short, not in the rule's
    vocabulary) the answer is read with that turn as the request and as a follow-up, whole and
    streamed, and its score is the lower of the two readings' highest, each as one plain forward
    pass reads it: at a cut between the two it is safe, where the request reading alone (a bundle
    without ``short_turns``) flags it."""
    from dataclasses import replace

    from steerguard.manifest import SHORT_TURNS_BOTH, VIEW_REQUEST

    random_bundle = make_random_bundle(tiny_host, tmp_path, response=True, seed=7)
    info = random_bundle.manifest.response
    assert info is not None
    bundles = {
        way: Bundle(
            replace(random_bundle.manifest, response=replace(info, view=VIEW_REQUEST, short_turns=way)),
            random_bundle.tensors,
        )
        for way in (SHORT_TURNS_BOTH, None)
    }
    earlier, turn = "Mix flour, water and yeast.\nLet it rest.", "Walk me through it slowly."
    chat = [
        common_pb2.ChatMessage(role="system", content="Be brief."),
        common_pb2.ChatMessage(role="user", content="How do I bake bread at home?"),
        common_pb2.ChatMessage(role="assistant", content=earlier),
        common_pb2.ChatMessage(role="user", content=turn),
    ]
    answer = "Then knead it, let it rise and bake it hot."

    def alone(text: str) -> Any:
        system = {"role": "system", "content": "Be brief."}
        return normalise_request(messages=[system, {"role": "user", "content": text}])

    as_request = _expected_after(tiny_host, random_bundle, alone(turn), answer)
    as_follow_up = _expected_after(tiny_host, random_bundle, alone(chat[1].content), answer, earlier + "\n\n")
    assert as_follow_up < as_request - 1e-3  # so reading both ways changes the verdict
    cut = (as_request + as_follow_up) / 2
    for way, want in ((SHORT_TURNS_BOTH, as_follow_up), (None, as_request)):
        core = ClassifierCore(
            tiny_host, bundles[way], MemoryCache(max_entries=100, ttl_seconds=300), CoreConfig()
        )
        for stub in serve_core(core):
            whole = stub.Classify(Req(messages=chat, answer=answer, threshold=cut))
            assert whole.score == pytest.approx(want, abs=1e-5)
            assert whole.unsafe == (way is None)  # flagged only where both readings flag
            first = classifier_pb2.AnswerChunk(messages=chat, text=answer, threshold=cut)
            (streamed,) = stub.ClassifyStream(iter([first]))
            assert streamed.score == pytest.approx(want, abs=1e-5) and streamed.unsafe == (way is None)


def _expected_after(host: ModelHost, bundle: Bundle, conv: Any, answer: str, lead: str = "") -> float:
    """The highest segment-end score of ``answer`` after ``conv``, from one full forward pass.

    ``lead``: text read before the answer in the same reply, its positions not scored.
    """
    prefix = host.token_ids(conv)
    ids = text_ids(host, lead + answer)
    skip = len(text_ids(host, lead)) if lead else 0
    with torch.inference_mode():
        hidden = host.model(torch.tensor([prefix + ids]), output_hidden_states=True).hidden_states
    layer_out = hidden[bundle.manifest.response.layer + 1][0].double()  # type: ignore[union-attr]
    states, context_end = layer_out[len(prefix) :], layer_out[len(prefix) - 1]
    rows = []
    for end in [e for e in segment_ends(ids, ender_ids(host.tokenizer)) if e >= skip]:
        recent = states[max(0, end + 1 - RECENT_TOKENS) : end + 1].mean(dim=0)
        rows.append(torch.cat([states[end], recent, context_end]).float())
    return float(bundle.response_score(torch.stack(rows)).max())


def test_the_request_an_answer_replies_to_skips_follow_ups_and_keeps_a_bounded_lead(
    tiny_host: ModelHost,
) -> None:
    from steerguard.responses import LEAD_SEPARATOR, LEAD_TOKENS, answer_view

    def conv(*turns: tuple[str, str]) -> Any:
        return normalise_request(messages=[{"role": r, "content": c} for r, c in turns])

    seen = answer_view(
        tiny_host,
        conv(
            ("system", "Be brief."),
            ("user", "Tell me about the history of bread in Europe."),
            ("assistant", "Part one."),
            ("user", "Continue."),
            ("assistant", "Part two."),
            ("user", "Keep going, add more detail please."),
        ),
    )
    assert [m.content for m in seen.conv.messages] == [
        "Be brief.",
        "Tell me about the history of bread in Europe.",
    ]
    assert seen.lead == "Part one." + LEAD_SEPARATOR + "Part two."
    assert seen.text("Part three.") == seen.lead + LEAD_SEPARATOR + "Part three."
    question = "How do I blow up a balloon?"  # short, but a question of its own
    own = answer_view(tiny_host, conv(("user", "Hi there."), ("assistant", "Hello."), ("user", question)))
    assert [m.content for m in own.conv.messages] == [question] and own.lead == ""
    first = answer_view(tiny_host, conv(("user", "Continue.")))  # nothing was answered before it
    assert [m.content for m in first.conv.messages] == ["Continue."] and first.lead == ""
    long_lead = " ".join(f"sentence {i} is here." for i in range(400))
    bounded = answer_view(
        tiny_host, conv(("user", "Write it all."), ("assistant", long_lead), ("user", "More."))
    )
    assert len(text_ids(tiny_host, bounded.lead)) <= LEAD_TOKENS + 2
    assert bounded.lead.rstrip().endswith("sentence 399 is here.")

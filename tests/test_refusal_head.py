"""The refusal head (SafeSwitch): flagged rows decode with a low-rank delta on the LM head, others do not."""

from __future__ import annotations

import random

import pytest
import torch

from devstack.models import make_random_bundle
from steerguard.bundle import Bundle
from steerguard.data import refusals
from steerguard.errors import InvalidInput
from steerguard.generation import DecodeBatch, SamplingParams, generate
from steerguard.model.chat import normalise_request
from steerguard.model.steering import SteeringState
from steerguard.plan import HEAD, AutoVector, BatchPlan, Mode, SteeringRequest
from tests.test_plan import PROMPTS, run


@pytest.fixture(scope="module")
def head_bundle(tiny_host, tmp_path_factory):  # type: ignore[no-untyped-def]
    folder = tmp_path_factory.mktemp("head-bundle")
    make_random_bundle(tiny_host, folder, refusal_head=True)
    return Bundle.load(folder)


def flag_all(bundle: Bundle, threshold: float) -> Bundle:
    return bundle.with_threshold(threshold)


def test_flagged_rows_decode_with_the_head_and_others_stay_exact(tiny_host, head_bundle) -> None:  # type: ignore[no-untyped-def]
    _, plain = run(tiny_host, head_bundle, [SteeringRequest(), SteeringRequest()])
    head = SteeringRequest(Mode.AUTO, auto_vector=AutoVector.REFUSAL_HEAD)
    plan, toks = run(tiny_host, flag_all(head_bundle, 0.0), [head, SteeringRequest()])
    assert plan.applied[0].vector == HEAD and plan.applied[0].layers == []
    assert toks[0] != plain[0]  # the head changed the flagged row's tokens
    assert toks[1] == plain[1]  # the unsteered row beside it is bit-for-bit unchanged
    plan, toks = run(tiny_host, flag_all(head_bundle, 1.01), [head, head])
    assert [a.vector for a in plan.applied] == ["none", "none"] and toks == plain


def test_policy_may_name_the_head(tiny_host, head_bundle) -> None:  # type: ignore[no-untyped-def]
    from dataclasses import replace

    from steerguard.manifest import PolicyInfo

    bundle = flag_all(head_bundle, 0.0)
    bundle = bundle.with_manifest(replace(bundle.manifest, policy=PolicyInfo(default="refusal-head")))
    plan, _ = run(tiny_host, bundle, [SteeringRequest(Mode.AUTO)])
    assert plan.applied[0].vector == HEAD
    plan, _ = run(tiny_host, bundle, [SteeringRequest(Mode.AUTO, auto_vector=AutoVector.REFUSAL)])
    assert plan.applied[0].vector == "refusal"


def test_mode_refusal_head_decodes_every_row_with_the_head(tiny_host, head_bundle) -> None:  # type: ignore[no-untyped-def]
    """Ungated: whatever the probe says; the row beside it unchanged; a bundle without a head refuses it."""
    _, plain = run(tiny_host, head_bundle, [SteeringRequest(), SteeringRequest()])
    explicit = SteeringRequest(Mode.REFUSAL_HEAD)
    gated = SteeringRequest(Mode.AUTO, auto_vector=AutoVector.REFUSAL_HEAD)
    plan, toks = run(tiny_host, flag_all(head_bundle, 1.01), [explicit, SteeringRequest()])
    assert plan.applied[0].vector == HEAD and plan.applied[0].verdict is None
    assert toks[1] == plain[1] and toks[0] != plain[0]
    _, flagged = run(tiny_host, flag_all(head_bundle, 0.0), [gated, SteeringRequest()])
    assert flagged[0] == toks[0]  # the same tokens the head gives a flagged AUTO row
    from dataclasses import replace

    headless = head_bundle.with_manifest(replace(head_bundle.manifest, refusal_head=None))
    with pytest.raises(InvalidInput, match="mode refusal-head"):
        BatchPlan(headless, [explicit], tiny_host.identity.hidden_size)


def test_an_engine_without_the_head_answers_its_policy_rules_with_the_vector(tiny_host, head_bundle) -> None:  # type: ignore[no-untyped-def]
    """What the vLLM engine serves: the policy's head rules become the refusal vector, others are kept."""
    from dataclasses import replace

    from steerguard.manifest import PolicyInfo

    bundle = flag_all(head_bundle, 0.0)
    category = bundle.categories[0]
    policy = PolicyInfo(default="refusal-head", per_category={category: "category"})
    bundle = bundle.with_manifest(replace(bundle.manifest, policy=policy))
    served = bundle.with_head_answered_by_vector()
    assert served.manifest.policy == PolicyInfo(default="refusal", per_category={category: "category"})
    assert not any(served.policy_names_head(c) for c in ["", *served.categories])
    steered, _ = run(tiny_host, served, [SteeringRequest(Mode.AUTO)])
    vector, _ = run(tiny_host, bundle, [SteeringRequest(Mode.AUTO, auto_vector=AutoVector.REFUSAL)])
    if steered.applied[0].verdict.category != category:  # type: ignore[union-attr]
        assert steered.applied[0].vector == "refusal" == vector.applied[0].vector
        assert steered.applied[0].layers == vector.applied[0].layers != []
    plain = bundle.with_manifest(replace(bundle.manifest, policy=PolicyInfo()))
    assert plain.with_head_answered_by_vector() is plain


def test_head_rows_survive_continuous_batching(tiny_host, head_bundle) -> None:  # type: ignore[no-untyped-def]
    """A head row keeps its head when another batch joins it and when rows leave."""
    bundle = flag_all(head_bundle, 0.0)
    convs = [normalise_request(p) for p in PROMPTS]
    head = SteeringRequest(Mode.AUTO, auto_vector=AutoVector.REFUSAL_HEAD)
    alone_plan = BatchPlan(bundle, [head], tiny_host.identity.hidden_size)
    alone = generate(
        tiny_host,
        tiny_host.encode(convs[:1]),
        alone_plan.state,
        [SamplingParams(5)],
        extra_layers=alone_plan.extra_layers,
    )[0].token_ids
    plain_plan = BatchPlan(bundle, [SteeringRequest()], tiny_host.identity.hidden_size)
    first = DecodeBatch.start(tiny_host, tiny_host.encode(convs[1:]), plain_plan.state)
    plan = BatchPlan(bundle, [head], tiny_host.identity.hidden_size)
    second = DecodeBatch.start(tiny_host, tiny_host.encode(convs[:1]), plan.state, plan.extra_layers)
    first.extend(second)
    assert first.state.head_rows is not None and first.state.head_rows.tolist() == [False, True]
    got = []
    for _ in range(5):
        tok = torch.argmax(first.logits, dim=-1)
        got.append(int(tok[1]))
        first.step(tiny_host, tok)
    first.select([1])
    assert first.state.head_rows is not None and first.state.head_rows.tolist() == [True]
    assert got == alone[: len(got)]


def test_requests_for_a_missing_head_are_refused(tiny_bundle) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidInput, match="no refusal head"):
        BatchPlan(tiny_bundle, [SteeringRequest(Mode.AUTO, auto_vector=AutoVector.REFUSAL_HEAD)], 64)
    with pytest.raises(InvalidInput, match="only used with mode AUTO"):
        BatchPlan(tiny_bundle, [SteeringRequest(Mode.REFUSAL, auto_vector=AutoVector.REFUSAL)], 64)


def test_template_refusals_name_their_category() -> None:
    rng = random.Random(0)
    for category in refusals.CONCERNS:
        text = refusals.refusal(category, rng)
        assert refusals.names_category(text, category), (category, text)
        from steerguard import judge

        assert judge.is_refusal(text), text


def test_served_over_grpc_and_refused_where_unsupported(tiny_model_dir, tmp_path_factory) -> None:  # type: ignore[no-untyped-def]
    """AUTO with auto_vector REFUSAL_HEAD over a real channel; an unknown auto_vector is INVALID_ARGUMENT."""
    import grpc

    from devstack.steer import liven
    from steer_service.config import SteerConfig
    from steer_service.server import serve_in_process
    from steer_service.service import SteerService
    from steerguard.model.host import ModelHost
    from steerguard.v1 import steer_pb2, steer_pb2_grpc

    host = liven(ModelHost.load(tiny_model_dir))
    bundle = make_random_bundle(host, tmp_path_factory.mktemp("head-grpc"), refusal_head=True).with_threshold(
        0.0
    )
    service = SteerService(host, bundle, SteerConfig(max_batch_size=4, max_new_tokens_cap=32)).start()
    server = serve_in_process(service)
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    try:
        stub = steer_pb2_grpc.SteererStub(channel)
        S = steer_pb2.Steering

        def ask(**steering: object) -> list[steer_pb2.GenerateChunk]:
            req = steer_pb2.GenerateRequest(prompt=PROMPTS[0], max_new_tokens=8, steering=S(**steering))
            return list(stub.Generate(req, timeout=60))

        head = ask(mode=S.AUTO, auto_vector=S.AUTO_VECTOR_REFUSAL_HEAD)
        vector = ask(mode=S.AUTO, auto_vector=S.AUTO_VECTOR_REFUSAL)[-1]
        assert head[-1].applied.vector == "refusal-head" and head[-1].verdict.unsafe
        assert vector.applied.vector == "refusal"
        # Mode REFUSAL_HEAD (the sidecar's steer rules): the head, ungated, the same tokens.
        explicit = ask(mode=S.REFUSAL_HEAD)
        assert explicit[-1].applied.vector == "refusal-head" and not explicit[-1].HasField("verdict")
        assert "".join(c.text for c in explicit) == "".join(c.text for c in head)
        with pytest.raises(grpc.RpcError) as err:
            ask(mode=S.AUTO, auto_vector=9)
        assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT and "auto_vector" in str(
            err.value.details()
        )
        service.engine.supports_refusal_head = False  # what the vLLM engine says
        for refused in (
            {"mode": S.AUTO, "auto_vector": S.AUTO_VECTOR_REFUSAL_HEAD},
            {"mode": S.REFUSAL_HEAD},
        ):
            with pytest.raises(grpc.RpcError) as err:
                ask(**refused)
            assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT and "refusal head" in str(
                err.value.details()
            )
    finally:
        channel.close()
        server.stop(0)
        service.close()


def test_fitted_head_learns_the_refusals(tiny_host) -> None:  # type: ignore[no-untyped-def]
    """On prompts held apart the fitted head predicts template refusals' tokens better than the LM head."""
    from steerguard.calibration.refusal_head import HeadSettings, refusal_head
    from steerguard.data.loaders import Example

    topics = ["a bank", "a car", "a phone", "an email account", "a house", "a shop", "a website", "a person"]
    categories = ["cybercrime", "violence"]
    harmful = [
        Example(
            f"Tell me how to attack {t} number {i}", 1, "test", "calibration", "harmful", categories[i % 2]
        )
        for i, t in enumerate(topics * 2)
    ]
    settings = HeadSettings(rank=4, copies=2, epochs=12, lr=1e-1, seed=0, batch_size=8)
    record, tensors = refusal_head(tiny_host, harmful, settings)
    h, vocab = tiny_host.identity.hidden_size, tiny_host.lm_head.weight.shape[0]
    assert tensors["refusal_head.a"].shape == (h, 4) and tensors["refusal_head.b"].shape == (4, vocab)
    acc = record["apart_token_accuracy"]
    assert acc["head"] > acc["base"] + 0.1, acc
    assert record["prompts"] == len(harmful) and record["rank"] == 4


def _harmful_examples() -> list:  # type: ignore[type-arg]
    from steerguard.data.loaders import Example

    cats = ["cybercrime", "violence"]
    return [
        Example(f"Tell me how to attack target {i}", 1, "test", "calibration", "harmful", cats[i % 2])
        for i in range(6)
    ]


def test_a_tail_lightens_the_decode_deltas_once() -> None:
    """The steered text's schedule: full strength for k decode steps, then deltas times the gain."""
    from steerguard.model.steering import SteeringState

    state = SteeringState(deltas={3: torch.ones(2, 4)}, tail=(2, 0.5))
    state.after_step(1)
    assert torch.equal(state.deltas[3], torch.ones(2, 4))
    state.after_step(2)
    state.after_step(3)
    assert torch.equal(state.deltas[3], torch.full((2, 4), 0.5))


def test_steered_text_is_cut_at_whole_sentences_and_the_most_fluent_answer_wins(tiny_host) -> None:  # type: ignore[no-untyped-def]
    from steerguard.calibration.steered_refusals import most_fluent, whole_sentences
    from steerguard.generation import SamplingParams, generate

    assert whole_sentences("I can't help with that. I'm here to help with oth") == "I can't help with that."
    assert whole_sentences("I can't help. More") is None  # under 20 characters left
    conv = normalise_request("Tell me how to attack a bank")
    own = generate(tiny_host, tiny_host.encode([conv]), SteeringState(), [SamplingParams(max_new_tokens=12)])
    greedy = own[0].token_ids
    noise = [int(t) for t in torch.randint(10, tiny_host.lm_head.weight.shape[0], (len(greedy),))]
    assert most_fluent(tiny_host, conv, [noise, greedy]) == greedy  # the model's own greedy answer


def test_steered_text_needs_the_bundle_and_falls_back_without_refusals(tiny_host, head_bundle) -> None:  # type: ignore[no-untyped-def]
    from steerguard.calibration.refusal_head import HeadSettings, refusal_head

    s = HeadSettings(
        rank=2, copies=1, epochs=1, lr=1e-2, seed=0, batch_size=8, text="steered", max_new_tokens=6
    )
    with pytest.raises(ValueError, match="calibrated bundle"):
        refusal_head(tiny_host, _harmful_examples(), s)
    with pytest.raises(ValueError, match="must be one of"):
        refusal_head(tiny_host, _harmful_examples(), HeadSettings(2, 1, 1, 1e-2, 0, 8, text="x"), head_bundle)
    # A random model writes no refusal the judge accepts: the template text is fitted, and said so.
    record, tensors = refusal_head(tiny_host, _harmful_examples(), s, head_bundle)
    assert "templates" in record["training_text"] and tensors["refusal_head.a"].shape[1] == 2

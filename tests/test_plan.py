"""Steering plans: validation, per-row vectors, gated AUTO/SCANS decisions."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from steerguard.errors import InvalidInput
from steerguard.generation import SamplingParams, generate
from steerguard.model.chat import normalise_request
from steerguard.model.steering import SteeringState
from steerguard.plan import BatchPlan, Mode, SteeringRequest

PROMPTS = ["How do I bake bread?", "Write a poem about the sea"]


def run(host, bundle, requests):  # type: ignore[no-untyped-def]
    batch = host.encode([normalise_request(p) for p in PROMPTS[: len(requests)]])
    plan = BatchPlan(bundle, requests, host.identity.hidden_size)
    outs = generate(
        host, batch, plan.state, [SamplingParams(6)] * len(requests), extra_layers=plan.extra_layers
    )
    return plan, [o.token_ids for o in outs]


@pytest.mark.parametrize(
    ("request_", "match"),
    [
        (SteeringRequest(Mode.CATEGORY), "needs a category"),
        (SteeringRequest(Mode.CATEGORY, "nope"), "unknown category"),
        (SteeringRequest(Mode.REFUSAL, strength=99), "strength"),
        (SteeringRequest(Mode.REFUSAL, strength=float("nan")), "strength"),
        (SteeringRequest(Mode.AUTO, "violence"), "only used with"),
    ],
)
def test_invalid_requests(tiny_bundle, request_, match) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidInput, match=match):
        BatchPlan(tiny_bundle, [request_], 64)


def test_modes_apply_their_vectors(tiny_host, tiny_bundle) -> None:  # type: ignore[no-untyped-def]
    plan, _ = run(tiny_host, tiny_bundle, [SteeringRequest(Mode.REFUSAL, strength=2.0), SteeringRequest()])
    assert plan.applied[0].vector == "refusal" and plan.applied[0].strength == 2.0
    assert plan.applied[1].vector == "none"
    for layer, d in plan.state.deltas.items():
        assert torch.count_nonzero(d[1]) == 0
        assert layer in tiny_bundle.vector_layers("refusal")


def test_auto_safe_equals_none_and_unsafe_is_steered(tiny_host, tiny_bundle) -> None:  # type: ignore[no-untyped-def]
    _, plain = run(tiny_host, tiny_bundle, [SteeringRequest(), SteeringRequest()])
    # threshold 0 marks everything unsafe, threshold above 1 marks everything safe
    for threshold, expect_same in ((1.01, True), (0.0, False)):
        tiny_bundle.manifest = tiny_bundle.manifest.with_threshold(threshold)
        try:
            plan, toks = run(tiny_host, tiny_bundle, [SteeringRequest(Mode.AUTO, strength=4.0)] * 2)
        finally:
            tiny_bundle.manifest = tiny_bundle.manifest.with_threshold(0.5)
        assert all(a.verdict is not None for a in plan.applied)
        assert (toks == plain) is expect_same
        assert all((a.vector == "none") is expect_same for a in plan.applied)


def test_scans_subtracts_refusal_for_safe(tiny_host, tiny_bundle) -> None:  # type: ignore[no-untyped-def]
    tiny_bundle.manifest = tiny_bundle.manifest.with_threshold(1.01)
    try:
        plan, _ = run(tiny_host, tiny_bundle, [SteeringRequest(Mode.SCANS)])
    finally:
        tiny_bundle.manifest = tiny_bundle.manifest.with_threshold(0.5)
    assert plan.applied[0].vector == "-refusal"
    assert plan.applied[0].verdict is not None and not plan.applied[0].verdict.unsafe
    assert isinstance(plan.state, SteeringState) and plan.state.decided


def test_refusal_rows_get_the_bundle_prompt_gain(tiny_host, tiny_bundle) -> None:  # type: ignore[no-untyped-def]
    original = tiny_bundle.manifest
    refusal = original.vector("refusal")
    tiny_bundle.manifest = original.with_vector("refusal", replace(refusal, prompt_gain=1.5))
    tiny_bundle.manifest = tiny_bundle.manifest.with_threshold(0.0)  # every AUTO row is flagged
    try:
        plan, _ = run(tiny_host, tiny_bundle, [SteeringRequest(Mode.AUTO), SteeringRequest(Mode.REFUSAL)])
        assert plan.state.prompt_gain is not None
        # Explicit REFUSAL is steered like a flagged AUTO row, gain included.
        assert plan.state.prompt_gain.tolist() == [1.5, 1.5]
        plan, _ = run(tiny_host, tiny_bundle, [SteeringRequest(Mode.NONE), SteeringRequest(Mode.REFUSAL)])
        assert plan.state.prompt_gain is not None and plan.state.prompt_gain.tolist() == [1.0, 1.5]
        tiny_bundle.manifest = tiny_bundle.manifest.with_threshold(1.0)  # no AUTO row is flagged
        plan, _ = run(tiny_host, tiny_bundle, [SteeringRequest(Mode.AUTO), SteeringRequest(Mode.NONE)])
        assert plan.state.prompt_gain is None  # nothing steered: the prompt pass multiplies nothing
    finally:
        tiny_bundle.manifest = original

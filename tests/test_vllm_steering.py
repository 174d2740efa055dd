"""Steering rows of vLLM's flattened batch (steer_service.vllm_steering), without vLLM.

The flattened layout, ids and sequence lengths are built here as vLLM's
forward context gives them (docs/vllm.md); the deltas must be exactly what
the in-house plan adds to the same request's positions. The end-to-end
equivalence with vLLM itself is ``scripts/vllm_steering_check.py`` (40 of 40
generations equal; vLLM is not installed in CI).
"""

from __future__ import annotations

import torch

from steer_service.vllm_steering import Registry, RowSteering, steer_rows
from steerguard.bundle import Bundle
from steerguard.manifest import REFUSAL
from steerguard.plan import BatchPlan, Mode, SteeringRequest

H = 64


def layout(*lengths: int) -> list[int]:
    starts = [0]
    for n in lengths:
        starts.append(starts[-1] + n)
    return starts


def test_each_request_gets_its_own_delta_on_its_own_rows(tiny_bundle: Bundle) -> None:
    registry = Registry()
    registry.put("a", RowSteering.build(tiny_bundle, SteeringRequest(Mode.REFUSAL), 5, H))
    registry.put("b", RowSteering.build(tiny_bundle, SteeringRequest(Mode.NONE), 3, H))
    layer = tiny_bundle.vector_layers(REFUSAL)[0]
    delta = tiny_bundle.deltas(REFUSAL)[layer]
    gain = tiny_bundle.prompt_gain(REFUSAL)
    # A prefill of both (5 + 3 rows), then a decode step (1 + 1), with vLLM's id suffixes and a stranger.
    hidden = torch.zeros((8, H))
    steer_rows(layer, hidden, None, layout(5, 3), [5, 3], ["a-x1", "b-x2"], registry)
    torch.testing.assert_close(hidden[:5], (gain * delta).expand(5, H))
    assert not hidden[5:].any()
    hidden = torch.zeros((3, H))
    steer_rows(layer, hidden, None, layout(1, 1, 1), [6, 4, 9], ["a-x1", "b-x2", "c-x3"], registry)
    torch.testing.assert_close(hidden[0], delta)  # a generated position: the plain delta
    assert not hidden[1:].any()


def test_a_gate_is_decided_in_the_pass_of_the_last_prompt_token(tiny_bundle: Bundle) -> None:
    """AUTO reads the stream (hidden + residual) at the last prompt token, as the in-house plan does."""
    flagged = tiny_bundle.with_threshold(1e-6)  # every prompt is unsafe
    registry = Registry()
    row = RowSteering.build(flagged, SteeringRequest(Mode.AUTO), 6, H)
    registry.put("a", row)
    probe = flagged.probe_layer
    hidden, residual = torch.randn((4, H)), torch.randn((4, H))
    steer_rows(probe, hidden, residual, layout(4), [4], ["a-1"], registry)  # first chunk of a long prompt
    assert not row.plan.state.decided
    second = torch.randn((2, H))
    steer_rows(probe, second, torch.zeros((2, H)), layout(2), [6], ["a-1"], registry)
    assert row.plan.state.decided and row.applied.verdict is not None and row.applied.verdict.unsafe
    same = BatchPlan(flagged, [SteeringRequest(Mode.AUTO)], H)
    extra = same.state.decide(second[1:2])  # type: ignore[misc]
    assert row.applied.vector == same.applied[0].vector != "none"
    for layer, d in extra.items():
        torch.testing.assert_close(row.plan.state.deltas[layer], d)


def test_a_clear_auto_row_stays_unsteered(tiny_bundle: Bundle) -> None:
    clear = tiny_bundle.with_threshold(0.999999)
    registry = Registry()
    row = RowSteering.build(clear, SteeringRequest(Mode.AUTO), 3, H)
    registry.put("a", row)
    hidden = torch.randn((3, H))
    steer_rows(clear.probe_layer, hidden, None, layout(3), [3], ["a-1"], registry)
    for layer in clear.steer_layers():
        before = torch.randn((1, H))
        after = before.clone()
        steer_rows(layer, after, None, layout(1), [4], ["a-1"], registry)
        torch.testing.assert_close(after, before)
    assert row.applied.vector == "none" and row.applied.verdict is not None and not row.applied.verdict.unsafe

"""Per-request steering inside vLLM's flattened batch, with the in-house engine's own plans.

Why the plans are reused: each request gets a one-row
:class:`steerguard.plan.BatchPlan`, the object the in-house engine builds,
so its deltas, prompt gain and AUTO/SCANS gate (the probe on the last prompt
token, decided in the prompt's own pass) are the same by construction; only
where a request's rows sit differs. vLLM flattens every request's tokens into
one ``[tokens, hidden]`` tensor; its forward context says which rows are
whose (``attn_metadata.query_start_loc``, in the order of
``input_batch.req_ids``) and how far each request has got (``seq_lens``:
prompt positions until it reaches the prompt's length). vLLM's decoder
layers return ``(hidden, residual)``, whose sum is the residual stream our
probe reads; a delta added to ``hidden`` reaches every later layer as one
added to the stream. docs/vllm.md has the facts this rests on.

This module imports no vLLM: :func:`steer_rows` takes plain tensors and
lists, so it is tested without it.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from steerguard.bundle import Bundle
from steerguard.plan import Applied, BatchPlan, SteeringRequest


@dataclass
class RowSteering:
    """One request's steering: its one-row plan and its prompt's length."""

    plan: BatchPlan
    prompt_len: int

    @classmethod
    def build(
        cls, bundle: Bundle, request: SteeringRequest, prompt_len: int, hidden_size: int
    ) -> RowSteering:
        return cls(BatchPlan(bundle, [request], hidden_size), prompt_len)

    @property
    def applied(self) -> Applied:
        return self.plan.applied[0]

    @property
    def layers(self) -> set[int]:
        state = self.plan.state
        found = set(state.deltas) | self.plan.extra_layers
        return found | ({state.probe_layer} if state.probe_layer is not None else set())


class Registry:
    """Steering by request id, shared by the engine thread and the hooks (same thread, or guarded)."""

    def __init__(self) -> None:
        self._rows: dict[str, RowSteering] = {}
        self._lock = threading.Lock()

    def put(self, request_id: str, row: RowSteering) -> None:
        with self._lock:
            self._rows[request_id] = row

    def pop(self, request_id: str) -> RowSteering | None:
        with self._lock:
            return self._rows.pop(request_id, None)

    def get(self, internal_id: str) -> RowSteering | None:
        """vLLM adds ``-suffix`` to a request's id inside the engine."""
        with self._lock:
            return self._rows.get(internal_id.split("-", 1)[0])


def steer_rows(
    layer: int,
    hidden: torch.Tensor,
    residual: torch.Tensor | None,
    starts: Sequence[int],
    seq_lens: Sequence[int],
    req_ids: Sequence[str],
    registry: Registry,
) -> None:
    """Add each request's delta at ``layer`` to its own rows of ``hidden``, in place.

    At the probe layer, a gated request whose last prompt position is in
    this pass is decided first (on ``hidden + residual`` there), as the
    in-house hook decides before adding that layer's own delta.
    """
    for row, req in enumerate(req_ids):
        steering = registry.get(req)
        if steering is None:
            continue
        a, b = starts[row], starts[row + 1]
        state = steering.plan.state
        in_prompt = seq_lens[row] <= steering.prompt_len
        # Decide a gate in the pass that holds the last prompt token (a prompt may span passes).
        last_prompt_pass = seq_lens[row] == steering.prompt_len
        if layer == state.probe_layer and state.decide is not None and not state.decided and last_prompt_pass:
            stream = hidden[b - 1 : b] + (0 if residual is None else residual[b - 1 : b])
            for k, v in state.decide(stream.float().cpu()).items():
                state.add(k, v)
            state.decided = True
        delta = state.deltas.get(layer)
        if delta is None:
            continue
        gain = 1.0
        if in_prompt and state.prompt_gain is not None:
            gain = float(state.prompt_gain[0])
        hidden[a:b] += (gain * delta[0]).to(device=hidden.device, dtype=hidden.dtype)

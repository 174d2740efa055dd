"""Turn per-request steering choices into one batch's :class:`SteeringState`.

Shared by the offline ``generate`` command and the steer service, so a mode
means the same thing everywhere:

- ``none``: nothing added;
- ``refusal``: the refusal vector added (SCANS/Arditi);
- ``category``: the named category's vector added (SafeSteer: a safe,
  on-topic answer rather than a refusal);
- ``auto``: gated by the probe during the prompt's forward pass: unsafe → the
  vector the bundle's policy names for the predicted category; safe → nothing,
  so the row yields exactly its unsteered tokens;
- ``scans``: as ``auto``, but a safe prompt gets the refusal vector
  *subtracted* (SCANS' remedy for over-refusal);
- ``refusal-head``: the row decodes with the bundle's refusal head, ungated:
  for a prompt judged unsafe elsewhere (the sidecar's steer rules).

What a flagged ``auto``/``scans`` row gets is its request's ``auto_vector``:
``policy`` (the bundle's policy for the verdict's category), ``refusal`` (the
refusal vector), ``category`` (the verdict's category vector, SafeSteer) or
``refusal-head`` (the bundle's refusal head: an informative refusal decoded
by a low-rank delta on the LM head, SafeSwitch). A policy may name
``refusal-head`` too.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum

import torch

from steerguard.bundle import CATEGORY_PREFIX, MAX_STRENGTH, REFUSAL, Bundle
from steerguard.errors import InvalidInput
from steerguard.manifest import REFUSAL_HEAD
from steerguard.model.steering import SteeringState
from steerguard.verdict import Verdict, verdicts_from_states


class Mode(str, Enum):
    NONE = "none"
    REFUSAL = "refusal"
    CATEGORY = "category"
    AUTO = "auto"
    SCANS = "scans"
    REFUSAL_HEAD = "refusal-head"  # decode with the refusal head, ungated (a prompt judged elsewhere)

    @property
    def gated(self) -> bool:
        return self in (Mode.AUTO, Mode.SCANS)


class AutoVector(str, Enum):
    POLICY = "policy"
    REFUSAL = "refusal"
    CATEGORY = "category"
    REFUSAL_HEAD = "refusal-head"


# The name ``Applied.vector`` (and a bundle policy) gives the refusal head.
HEAD = REFUSAL_HEAD


@dataclass(frozen=True)
class SteeringRequest:
    mode: Mode = Mode.NONE
    category: str = ""
    strength: float = 0.0  # 0: the bundle's calibrated default
    auto_vector: AutoVector = AutoVector.POLICY  # what a flagged AUTO/SCANS row gets


@dataclass
class Applied:
    """What was done to one row (reported back to the caller)."""

    mode: Mode
    vector: str = "none"  # "none", "refusal", "-refusal", "category:<name>" or "refusal-head"
    layers: list[int] = field(default_factory=list)
    strength: float = 0.0
    verdict: Verdict | None = None

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = {
            "mode": self.mode.value,
            "vector": self.vector,
            "layers": list(self.layers),
            "strength": self.strength,
        }
        if self.verdict is not None:
            out["verdict"] = self.verdict.as_dict()
        return out


def validate(request: SteeringRequest, bundle: Bundle) -> None:
    """Raise :class:`InvalidInput` for a request the bundle cannot serve."""
    s = request.strength
    if not math.isfinite(s) or s < 0 or s > MAX_STRENGTH:
        raise InvalidInput(f"strength must be in [0, {MAX_STRENGTH}] (0 = calibrated default)")
    if request.mode is Mode.CATEGORY:
        if not request.category:
            raise InvalidInput("mode CATEGORY needs a category")
        if CATEGORY_PREFIX + request.category not in bundle.vector_names:
            known = ", ".join(bundle.categories) or "none"
            raise InvalidInput(f"unknown category {request.category!r} (known: {known})")
    elif request.category and request.mode is not Mode.CATEGORY:
        raise InvalidInput("category is only used with mode CATEGORY")
    if request.mode is not Mode.NONE and REFUSAL not in bundle.vector_names:
        raise InvalidInput("this bundle has no refusal vector")
    if request.auto_vector is not AutoVector.POLICY and not request.mode.gated:
        raise InvalidInput("auto_vector is only used with mode AUTO or SCANS")
    if request.auto_vector is AutoVector.REFUSAL_HEAD and not bundle.has_refusal_head:
        raise InvalidInput("this bundle has no refusal head (auto_vector refusal-head)")
    if request.mode is Mode.REFUSAL_HEAD and not bundle.has_refusal_head:
        raise InvalidInput("this bundle has no refusal head (mode refusal-head)")
    if request.auto_vector is AutoVector.CATEGORY and not bundle.categories:
        raise InvalidInput("this bundle has no category vectors (auto_vector category)")


def _resolved_strength(bundle: Bundle, vector: str, requested: float) -> float:
    return bundle.default_strength(vector) if requested == 0 else float(requested)


class BatchPlan:
    """Steering for one batch of rows; ``applied`` is complete after the prompt pass."""

    def __init__(self, bundle: Bundle, requests: Sequence[SteeringRequest], hidden_size: int) -> None:
        for r in requests:
            validate(r, bundle)
        self.bundle = bundle
        self.requests = list(requests)
        self.hidden_size = hidden_size
        self.applied: list[Applied] = [Applied(r.mode) for r in requests]
        n = len(requests)
        self.state = SteeringState()
        for i, r in enumerate(requests):
            if r.mode is Mode.REFUSAL:
                self._add_row(i, REFUSAL, r.strength, 1.0, n)
                self._set_gain(i, REFUSAL)
            elif r.mode is Mode.CATEGORY:
                self._add_row(i, CATEGORY_PREFIX + r.category, r.strength, 1.0, n)
            elif r.mode is Mode.REFUSAL_HEAD:
                self.state.mark_head(i, n)
                self.applied[i].vector = HEAD
        self.gated_rows = [i for i, r in enumerate(requests) if r.mode.gated]
        if self.gated_rows:
            self.state.probe_layer = bundle.probe_layer
            self.state.decide = self._decide
        if bundle.has_refusal_head and (self.gated_rows or self.state.head_rows is not None):
            self.state.head = bundle.refusal_head()

    def flagged_vector(self, request: SteeringRequest, category: str) -> str:
        """What a flagged row of ``category`` gets: a vector's name, or :data:`HEAD`."""
        choice = request.auto_vector
        if choice is AutoVector.REFUSAL_HEAD:
            return HEAD
        if choice is AutoVector.REFUSAL:
            return REFUSAL
        if choice is AutoVector.CATEGORY and CATEGORY_PREFIX + category in self.bundle.vector_names:
            return CATEGORY_PREFIX + category
        if choice is AutoVector.POLICY and self.bundle.policy_names_head(category):
            return HEAD
        return self.bundle.policy_vector(category)

    @property
    def extra_layers(self) -> set[int]:
        """Layers a gated decision may steer (hooked before the pass starts)."""
        return set(self.bundle.steer_layers()) if self.gated_rows else set()

    def _row_deltas(self, vector: str, strength: float, sign: float) -> dict[int, torch.Tensor]:
        return self.bundle.deltas(vector, strength, sign)

    def _add_row(
        self, row: int, vector: str, strength: float, sign: float, n: int
    ) -> dict[int, torch.Tensor]:
        deltas = self._row_deltas(vector, strength, sign)
        for layer, d in deltas.items():
            full = torch.zeros((n, self.hidden_size))
            full[row] = d
            self.state.add(layer, full)
        a = self.applied[row]
        a.vector = ("-" if sign < 0 else "") + vector
        a.layers = sorted(deltas)
        a.strength = _resolved_strength(self.bundle, vector, strength)
        return deltas

    def _set_gain(self, row: int, vector: str) -> None:
        """The bundle's gain on the prompt positions of a row steered with ``vector``.

        Every refusal-steered row gets it, explicit or gated: calibration
        draws the steering layers from the probe layer up, so an explicit
        REFUSAL row is steered exactly like a flagged AUTO row, and the gain
        (prompt positions vs generated tokens) was tuned for that steering.
        Rows without one leave the prompt pass's deltas as they are (a plan
        with none multiplies nothing).
        """
        gain = self.bundle.prompt_gain(vector)
        if gain == 1.0:
            return
        if self.state.prompt_gain is None:
            self.state.prompt_gain = torch.ones(len(self.requests))
        self.state.prompt_gain[row] = gain

    def _decide(self, states: torch.Tensor) -> dict[int, torch.Tensor]:
        """Called once at the probe layer with every row's last-token state."""
        n = states.shape[0]
        verdicts = verdicts_from_states(self.bundle, states)
        extra: dict[int, torch.Tensor] = {}
        for i in self.gated_rows:
            r, v = self.requests[i], verdicts[i]
            self.applied[i].verdict = v
            if v.unsafe:
                vector, sign = self.flagged_vector(r, v.category), 1.0
                if vector == HEAD:
                    self.state.mark_head(i, n)
                    self.applied[i].vector = HEAD
                    continue
            elif r.mode is Mode.SCANS:
                vector, sign = REFUSAL, -1.0
            else:
                continue
            a = self.applied[i]
            self._set_gain(i, vector)
            deltas = self._row_deltas(vector, r.strength, sign)
            for layer, d in deltas.items():
                if layer not in extra:
                    extra[layer] = torch.zeros((n, self.hidden_size))
                extra[layer][i] = d
            a.vector = ("-" if sign < 0 else "") + vector
            a.layers = sorted(deltas)
            a.strength = _resolved_strength(self.bundle, vector, r.strength)
        return extra

"""Per-row activation steering applied through removable hooks.

A :class:`SteeringState` holds, per decoder layer, a ``[batch, hidden]`` delta
added to the residual stream at that layer's output for every position of the
row (prompt and generated tokens). Rows whose delta is zero are untouched
bit-for-bit (``x + 0.0 == x``), which is why one batch can mix steered and
unsteered requests and the unsteered ones produce exactly their unsteered
tokens.

Gated steering (AUTO/SCANS) needs the probe's verdict before it knows what to
add. ``decide`` is called once, from a hook on ``probe_layer`` during the
prompt's own forward pass, with the last-token states there; the deltas it
returns are applied from that layer on in the same pass and for every later
decode step, so no second forward pass is needed. Steering layers *below* the
probe layer therefore leave the prompt positions unsteered for gated rows (the
verdict is not known yet when they run) and steer the generated tokens only;
calibration draws its steering layers from the probe layer up for this reason.

``prompt_gain`` (per row) scales the deltas on the prompt's positions only
(the pass run with ``prompt=True``). Refusals depend mostly on the prompt
positions and fluency mostly on the decode-time delta, so a gain above 1 buys
refusals without the decode strength that costs perplexity; generated tokens
always get the plain delta. A gain multiplies a delta, so a row with no delta
stays exactly unsteered (``0 * g == 0``).

A row may also decode with the bundle's *refusal head* (SafeSwitch): a
low-rank delta on the LM head's logits, ``h @ a @ b``, added for the rows
``head_rows`` marks (a gated row marked by ``decide`` gets it from its
first generated token on). Other rows' logits are left untouched.

Hooks exist only inside :func:`apply_steering` and are removed in ``finally``:
after any request, failed or cancelled, the model is exactly unsteered.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from steerguard.model.hooks import layer_hooks, output_hook

Decider = Callable[[torch.Tensor], dict[int, torch.Tensor]]


@dataclass
class SteeringState:
    """Mutable per-batch steering; the engine may reshape rows between steps."""

    deltas: dict[int, torch.Tensor] = field(default_factory=dict)
    probe_layer: int | None = None
    decide: Decider | None = None
    decided: bool = False
    prompt_gain: torch.Tensor | None = None  # [batch]; None means 1 for every row
    in_prompt: bool = False  # set by apply_steering(prompt=True) for the prompt's pass
    head: tuple[torch.Tensor, torch.Tensor] | None = None  # the refusal head (a [H, r], b [r, V])
    head_rows: torch.Tensor | None = None  # [batch] bool: rows that decode with the head
    # (k, gain): after k decode steps every delta is multiplied by gain (static generation
    # only; calibration's steered refusals: a full-strength opening, a lighter tail).
    tail: tuple[int, float] | None = None

    def add(self, layer: int, delta: torch.Tensor) -> None:
        """Accumulate a ``[batch, hidden]`` delta at ``layer``."""
        if layer in self.deltas:
            self.deltas[layer] = self.deltas[layer] + delta
        else:
            self.deltas[layer] = delta

    def layers(self) -> set[int]:
        found = set(self.deltas)
        if self.probe_layer is not None:
            found.add(self.probe_layer)
        return found

    def select_rows(self, index: torch.Tensor) -> None:
        """Keep only the given rows (continuous batching drops finished rows)."""
        self.deltas = {k: v.index_select(0, index) for k, v in self.deltas.items()}
        if self.prompt_gain is not None:
            self.prompt_gain = self.prompt_gain.index_select(0, index)
        if self.head_rows is not None:
            self.head_rows = self.head_rows.index_select(0, index.to(self.head_rows.device))

    def after_step(self, step: int) -> None:
        """Apply ``tail`` once ``step`` decode steps have run."""
        if self.tail is not None and step == self.tail[0]:
            self.deltas = {k: v * self.tail[1] for k, v in self.deltas.items()}

    def is_empty(self) -> bool:
        return not self.deltas and (self.decide is None or self.decided) and not self.uses_head()

    def uses_head(self) -> bool:
        return self.head is not None and self.head_rows is not None and bool(self.head_rows.any())

    def mark_head(self, row: int, rows: int) -> None:
        """Row ``row`` (of ``rows``) decodes with the refusal head from now on."""
        if self.head_rows is None:
            self.head_rows = torch.zeros(rows, dtype=torch.bool)
        self.head_rows[row] = True

    def decided_copy(self) -> SteeringState:
        """What later decode steps need once the prompt pass has run: deltas and head rows."""
        # No row decodes with the head: no LM-head hook on any later step.
        used = self.uses_head()
        out = SteeringState(
            deltas=dict(self.deltas),
            decided=True,
            head=self.head if used else None,
            head_rows=self.head_rows if used else None,
        )
        out.drop_zero_layers()
        return out

    def concat(self, other: SteeringState, rows: int, other_rows: int) -> SteeringState:
        """A decided state for ``self``'s ``rows`` followed by ``other``'s ``other_rows``.

        Continuous batching appends newly prefilled rows to a running batch;
        a layer only one side steers gets zero rows for the other side, which
        leaves those rows bit-for-bit unsteered. Gates must have been decided
        (they run in the prompt pass), so the result carries no decider.
        """
        if not (self.decide is None or self.decided) or not (other.decide is None or other.decided):
            raise ValueError("cannot merge a steering state whose gate has not been decided")
        merged: dict[int, torch.Tensor] = {}
        for layer in sorted(set(self.deltas) | set(other.deltas)):
            mine, theirs = self.deltas.get(layer), other.deltas.get(layer)
            like = mine if mine is not None else theirs
            assert like is not None
            if mine is None:
                mine = like.new_zeros((rows, like.shape[1]))
            if theirs is None:
                theirs = like.new_zeros((other_rows, like.shape[1]))
            merged[layer] = torch.cat([mine, theirs], dim=0)
        out = SteeringState(deltas=merged, decided=True)
        if self.uses_head() or other.uses_head():
            out.head = self.head if self.uses_head() else other.head
            out.head_rows = torch.cat([_rows_of(self, rows), _rows_of(other, other_rows)])
        return out

    def drop_zero_layers(self) -> None:
        """Forget layers no row steers: no hook, and exactly the same result (``x + 0 == x``)."""
        self.deltas = {k: v for k, v in self.deltas.items() if bool(torch.any(v != 0))}


def _rows_of(state: SteeringState, rows: int) -> torch.Tensor:
    return state.head_rows if state.head_rows is not None else torch.zeros(rows, dtype=torch.bool)


def _head_hook(state: SteeringState) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor | None]:
    """Adds the refusal head's logits to the marked rows (others are not touched at all)."""

    def fn(hidden: torch.Tensor, logits: torch.Tensor) -> torch.Tensor | None:
        if state.head is None or state.head_rows is None or not bool(state.head_rows.any()):
            return None
        rows = state.head_rows.nonzero().flatten().to(logits.device)
        a, b = (t.to(device=hidden.device, dtype=hidden.dtype) for t in state.head)
        out = logits.clone()
        out[rows] = logits[rows] + ((hidden[rows] @ a) @ b).to(logits.dtype)
        return out

    return fn


def _hook_for(state: SteeringState, layer: int) -> Callable[[torch.Tensor], torch.Tensor | None]:
    def fn(hidden: torch.Tensor) -> torch.Tensor | None:
        if layer == state.probe_layer and state.decide is not None and not state.decided:
            extra = state.decide(hidden[:, -1, :].float().cpu())
            state.decided = True
            for k, v in extra.items():
                state.add(k, v)
        delta = state.deltas.get(layer)
        if delta is None:
            return None
        if delta.device != hidden.device or delta.dtype != hidden.dtype:
            delta = delta.to(device=hidden.device, dtype=hidden.dtype)
            state.deltas[layer] = delta  # moved once, not every step
        if state.in_prompt and state.prompt_gain is not None:
            delta = delta * state.prompt_gain.to(device=delta.device, dtype=delta.dtype)[:, None]
        return hidden + delta[:, None, :]

    return fn


@contextlib.contextmanager
def apply_steering(
    layers: nn.ModuleList,
    state: SteeringState,
    extra_layers: set[int] | None = None,
    *,
    prompt: bool = False,
    lm_head: nn.Module | None = None,
) -> Iterator[SteeringState]:
    """Hook every layer that may steer (``extra_layers``: ones a decider may add).

    ``prompt=True`` for the pass over the prompt's positions (``prompt_gain``
    applies). ``lm_head``: the model's LM head, hooked when the state carries
    a refusal head.
    """
    wanted = state.layers() | (extra_layers or set())
    state.in_prompt = prompt
    try:
        with contextlib.ExitStack() as stack:
            stack.enter_context(layer_hooks(layers, {i: _hook_for(state, i) for i in sorted(wanted)}))
            if lm_head is not None and state.head is not None:
                stack.enter_context(output_hook(lm_head, _head_hook(state)))
            yield state
    finally:
        state.in_prompt = False

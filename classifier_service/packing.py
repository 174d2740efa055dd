"""Length-aware packing of a batch's prompt suffixes into fewer, fuller rows.

A padded batch costs ``rows x longest``: one 300-token prompt among fifteen
30-token ones makes every row pay for 300 tokens. Packing puts several
prompts end to end in one row, each attending only to the shared prefix and
to itself (a block-diagonal causal mask), so the matrix products see little
padding. The price is attention over the whole packed row, which grows with
its width squared; :func:`plan_lines` weighs both with a cost model taken
from the model's shape and picks the cheapest line width.

The plan only changes *where* a prompt's tokens sit; its states are those of
the plain forward pass up to float rounding (the tests check this).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

# SDPA on CPU reaches a fraction of the matmul rate: an attention pair costs
# this many times its FLOP share (measured on 2 AVX2 cores, SmolLM2-135M).
ATTENTION_INEFFICIENCY = 4.0
# Line widths tried, as multiples of the longest suffix.
WIDTH_FACTORS = (1.0, 1.5, 2.0, 3.0, 4.0)


@dataclass(frozen=True)
class Lines:
    """Row indices per packed line (each in placement order) and the common line width."""

    lines: list[list[int]]
    width: int

    @property
    def tokens(self) -> int:
        return len(self.lines) * self.width


def first_fit_decreasing(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Bins of row indices whose lengths sum to at most ``capacity`` (a longer row gets its own)."""
    bins: list[tuple[int, list[int]]] = []
    for i in sorted(range(len(lengths)), key=lambda k: (-lengths[k], k)):
        for b, (used, members) in enumerate(bins):
            if used + lengths[i] <= capacity:
                bins[b] = (used + lengths[i], [*members, i])
                break
        else:
            bins.append((lengths[i], [i]))
    return [members for _, members in bins]


def attention_weight(hidden_size: int, layer_params: int) -> float:
    """Cost of one query-key pair relative to one token through a layer's weights.

    A token through the layer's matrices costs ``2 * layer_params`` FLOPs; a
    query-key pair costs ``4 * hidden_size`` (scores and weighted values),
    scaled by how much slower attention runs than the matrix products.
    """
    return ATTENTION_INEFFICIENCY * 4.0 * hidden_size / (2.0 * max(1, layer_params))


def plan_lines(lengths: Sequence[int], prefix_len: int, pair_weight: float) -> Lines:
    """The cheapest packing of suffixes of ``lengths`` (all > 0) after a shared prefix.

    Cost of a plan = tokens through the weights + ``pair_weight`` x attention
    pairs (every query of a line against the prefix and the whole line).
    Width factor 1 is the plain padded batch, so packing is never chosen
    when it would cost more.
    """
    if not lengths or min(lengths) <= 0:
        raise ValueError("every suffix needs at least one token")
    longest = max(lengths)
    best: tuple[float, Lines] | None = None
    for factor in WIDTH_FACTORS:
        bins = first_fit_decreasing(lengths, int(longest * factor))
        width = max(sum(lengths[i] for i in b) for b in bins)
        cost = len(bins) * width * (1.0 + pair_weight * (prefix_len + width))
        if best is None or cost < best[0]:
            best = (cost, Lines(bins, width))
    assert best is not None
    return best[1]

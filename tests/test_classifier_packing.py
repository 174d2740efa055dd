"""The packing planner: every row placed once, never more expensive than padding."""

from __future__ import annotations

import random

import pytest

from classifier_service.packing import attention_weight, first_fit_decreasing, plan_lines


def cost(lines: list[list[int]], width: int, prefix: int, weight: float) -> float:
    return len(lines) * width * (1.0 + weight * (prefix + width))


def test_first_fit_decreasing_respects_capacity() -> None:
    lengths = [5, 3, 9, 2, 7, 1]
    bins = first_fit_decreasing(lengths, 10)
    assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in b) <= 10 for b in bins)
    assert first_fit_decreasing([12, 3], 10) == [[0], [1]]  # too long for any bin: alone


@pytest.mark.parametrize("seed", range(20))
def test_plan_is_complete_and_no_worse_than_padding(seed: int) -> None:
    rng = random.Random(seed)
    lengths = [rng.choice([rng.randint(1, 40), rng.randint(100, 400)]) for _ in range(rng.randint(1, 16))]
    weight = attention_weight(576, 3_540_000)
    plan = plan_lines(lengths, 22, weight)
    assert sorted(i for line in plan.lines for i in line) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in line) <= plan.width for line in plan.lines)
    padded = cost([[i] for i in range(len(lengths))], max(lengths), 22, weight)
    assert cost(plan.lines, plan.width, 22, weight) <= padded


def test_a_long_prompt_does_not_pad_the_short_ones() -> None:
    lengths = [300] + [20] * 15
    plan = plan_lines(lengths, 22, attention_weight(576, 3_540_000))
    assert plan.tokens < 0.5 * len(lengths) * 300


def test_empty_suffix_is_refused() -> None:
    with pytest.raises(ValueError):
        plan_lines([3, 0], 22, 0.001)

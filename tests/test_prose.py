"""Long benign texts: documents joined from the model's answers (steerguard.data.prose)."""

from __future__ import annotations

import random

import pytest

from steerguard.data import prose


def _words(text: str) -> int:
    return len(text.split())


def test_a_document_reaches_its_length_and_uses_every_answer_before_repeating_one() -> None:
    texts = [f"answer {i} " + "word " * 10 for i in range(6)]
    parts = prose.document(texts, random.Random(0), 61, _words)
    assert _words("\n\n".join(parts)) >= 61
    assert _words("\n\n".join(parts[:-1])) < 61  # no more than needed
    assert len(parts) == 6 and sorted(parts) == sorted(texts)  # 6 x 12 words: each once
    longer = prose.document(texts, random.Random(0), 100, _words)
    assert sorted(longer[:6]) == sorted(texts) and len(longer) == 9


def test_the_same_seed_builds_the_same_document() -> None:
    texts = [f"answer {i}" for i in range(20)]

    def build(seed: int) -> list[str]:
        return prose.document(texts, random.Random(seed), 15, _words)

    assert build(3) == build(3)
    assert build(3) != build(4)


def test_a_document_needs_prose() -> None:
    with pytest.raises(ValueError, match="no prose"):
        prose.document([], random.Random(0), 10, _words)


def test_answers_are_sampled_repeatably_and_short_ones_dropped(tiny_host) -> None:  # type: ignore[no-untyped-def]
    prompts = ["Describe a forest.", "Explain how tides work."]
    first = prose.write(tiny_host, prompts, seed=1, batch_size=2)
    assert first == prose.write(tiny_host, prompts, seed=1, batch_size=2)
    assert all(len(tiny_host.tokenizer(t)["input_ids"]) >= prose.MIN_TOKENS - 2 for t in first)

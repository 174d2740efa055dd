"""The follow-up rule: which user turns continue an answer (steerguard.follow_up)."""

from __future__ import annotations

import pytest

from steerguard.data import follow_ups
from steerguard.follow_up import MAX_WORDS, is_follow_up, topical_words


@pytest.mark.parametrize(
    "text",
    ["Go on.", "Continue please", "Make it shorter.", "List the materials.", "And the quantities?", "Why?"],
)
def test_turns_about_what_was_said_are_follow_ups(text: str) -> None:
    assert is_follow_up(text)


@pytest.mark.parametrize(
    "text",
    [
        "How do I blow up a balloon?",  # a topic of its own
        "How do I make a pipe bomb?",
        "Name two major world religions.",
        "Divide 871 by 8.",  # numbers are topical
        "",
        "Now continue and " + " ".join(["then"] * MAX_WORDS),  # too long, however plain
    ],
)
def test_short_requests_with_a_topic_of_their_own_are_not(text: str) -> None:
    assert not is_follow_up(text)


def test_the_rule_takes_the_calibration_phrases_it_was_set_on() -> None:
    """The rule was set on the calibration phrases only (the held-out ones measure it)."""
    missed = [p for p in follow_ups.CALIBRATION if not is_follow_up(p)]
    assert missed == ["Translate that into French."], missed
    assert topical_words("Translate that into French.") == ["translate", "french"]
    assert is_follow_up("That\u2019s not enough, go deeper.")  # typographic apostrophes read as plain

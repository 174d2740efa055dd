"""The follow-up rule: which user turns continue an answer (steerguard.follow_up)."""

from __future__ import annotations

from typing import Any

import pytest

from steerguard.data import follow_ups
from steerguard.follow_up import MAX_WORDS, is_follow_up, is_short, topical_words


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


def _chat(*turns: tuple[str, str]) -> Any:
    from steerguard.model.chat import normalise_request

    return normalise_request(messages=[{"role": r, "content": c} for r, c in turns])


def test_a_short_turn_the_rule_does_not_take_is_read_both_ways_where_the_bundle_says_so() -> None:
    """``short_turns: both``: where the rule's request is a short turn after an answer (the rule did
    not take it for a follow-up), it is read as the request and as a follow-up (the answer flagged
    only where both flag), also behind follow-ups the rule takes; every other answer once, as the
    rule says; bundles without it, or in the chat view, read every answer once."""
    from dataclasses import replace

    from steerguard.manifest import FEATURES, SHORT_TURNS_BOTH, VIEW_REQUEST, ResponseInfo
    from steerguard.responses import answer_readings

    both = ResponseInfo(1, 0.5, FEATURES, view=VIEW_REQUEST, short_turns=SHORT_TURNS_BOTH)
    unknown = "Walk me through it slowly."  # short, two words outside the vocabulary
    assert is_short(unknown) and not is_follow_up(unknown)
    after = _chat(("user", "How is bread made?"), ("assistant", "With flour."), ("user", unknown))
    assert answer_readings(after, both) == ({}, {2: True})
    chained = _chat(
        *[(m.role, m.content) for m in after.messages], ("assistant", "Knead."), ("user", "Go on.")
    )
    assert answer_readings(chained, both) == ({}, {2: True})  # "Go on." is the rule's; the turn before
    assert answer_readings(after, replace(both, short_turns=None)) == ({},)
    assert answer_readings(after, replace(both, view=None)) == ({},)
    assert answer_readings(after, None) == ({},)
    known = _chat(("user", "How is bread made?"), ("assistant", "With flour."), ("user", "Go on."))
    long = "Which flour makes the best rye bread, and why is that so?"
    asked = _chat(("user", "How is bread made?"), ("assistant", "With flour."), ("user", long))
    for conv in (known, asked, _chat(("user", unknown))):  # a rule's follow-up, long, nothing answered
        assert answer_readings(conv, both) == ({},)


def test_a_turn_can_be_taken_either_way(tiny_host: Any) -> None:
    from steerguard.responses import answer_view, last_turn

    conv = _chat(
        ("system", "Be brief."),
        ("user", "How is bread made?"),
        ("assistant", "With flour."),
        ("user", "Walk me through it slowly."),
    )
    as_request = answer_view(tiny_host, conv, last_turn(conv, False))
    assert [m.content for m in as_request.conv.messages] == ["Be brief.", "Walk me through it slowly."]
    assert as_request.lead == "" and answer_view(tiny_host, conv) == as_request  # the rule's reading
    as_follow_up = answer_view(tiny_host, conv, {3: True})
    assert [m.content for m in as_follow_up.conv.messages] == ["Be brief.", "How is bread made?"]
    assert as_follow_up.lead == "With flour." and last_turn(conv, True) == {3: True}
    go_on = _chat(("user", "How is bread made?"), ("assistant", "With flour."), ("user", "Go on."))
    assert [m.content for m in answer_view(tiny_host, go_on, last_turn(go_on, False)).conv.messages] == [
        "Go on."
    ]
    chained = _chat(
        *[(m.role, m.content) for m in conv.messages], ("assistant", "Knead."), ("user", "Go on.")
    )
    behind = answer_view(tiny_host, chained, {3: True})
    assert [m.content for m in behind.conv.messages] == ["Be brief.", "How is bread made?"]
    assert behind.lead == "With flour.\n\nKnead."


def test_a_plan_read_several_ways_takes_the_lowest_of_each_readings_highest() -> None:
    from steerguard.views import ViewPlan

    plain = ViewPlan()
    assert plain.pick([0.1, 0.7, 0.3]) == 1
    both = ViewPlan(answers=[None] * 5, readings=(2, 3))  # type: ignore[list-item]
    assert both.pick([0.1, 0.9, 0.2, 0.4, 0.3]) == 3  # max 0.9 and 0.4: flagged only as both flag
    assert both.pick([0.1, 0.2, 0.2, 0.4, 0.3]) == 1
    with pytest.raises(ValueError):
        both.pick([0.1, 0.2])
    with pytest.raises(ValueError):
        both.extend(ViewPlan())

"""Which user turns continue an answer ("Go on.") rather than ask something new.

Why: an answer after a follow-up is the rest of the reply to the request
before it, and the response probe judges it best read that way
(:func:`steerguard.responses.answer_view`). Read after "Go on." as if that
were the request, heads fitted on single turns flagged 28% of benign
continuations on calibration pairs; read after the earlier request, 1.8%.
But an answer to a *new* question read after the earlier request is read
after the wrong request: on calibration pairs, routing every short turn
(at most eight words) that way flagged 38% of the benign answers to short
new questions (docs/calibration.md, *Follow-up turns in answers*).

So a follow-up is a short turn with at most one word outside a closed
vocabulary of function words and words that manage a conversation
("continue", "shorter", "example", "rest"...): it asks about what was said,
not about a topic of its own. Set on calibration data only: it takes 59 of
the 60 calibration follow-up phrases (:data:`steerguard.data.follow_ups.CALIBRATION`;
not "Translate that into French.") and 2 of 1,901 calibration prompts as
follow-ups ("Describe how to do a handstand?", "How do I drop a table in
PostgreSQL?"), 15 of the first 5,000 mining-pool prompts.
"""

from __future__ import annotations

import re

MAX_WORDS = 8  # the longest calibration follow-up phrase has 7
MAX_TOPICAL_WORDS = 1  # "List the materials.", "And the quantities?"

_FUNCTION = """
a an the this that these those it its it's they them their there here
i me my mine you your yours we us our he him his she her
and or but so then also too just only even still yet
is are was were be been being am do does did done doing have has had having
can could would should will shall may might must need needs
what why how where when which who whom whose whatever
to of in on at by for from with about into onto over under through than as like
not no yes yeah yep ok okay sure right fine please thanks thank perfect great good alright
now again once more most less much many some any all every each else other another
very really actually exactly properly fully briefly quickly
that's it's i'm i'd i'll you're you've what's there's let's
don't didn't doesn't can't won't isn't wasn't
anything everything something nothing enough ahead time start know think want see
"""
_CONVERSATION = """
continue continuing keep keeps going go goes carry proceed resume finish finished complete
stop stopped halfway
tell say said explain elaborate clarify expand describe repeat rephrase reword summarise summarize simplify
give show write rewrite redo try make add put turn use include skip drop remove change fix
answer answered ask asked
mean meant happens happened next last first second third final following previous above earlier before after
example examples instance detail details detailed step steps point points part parts bit piece
rest end version
answers question questions list table words language format way
shorter longer simpler clearer deeper specific concrete exact full whole entire same different
instructions
"""
VOCABULARY = frozenset((_FUNCTION + _CONVERSATION).split())
_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower().replace("\u2019", "'"))


def topical_words(text: str) -> list[str]:
    """The words of ``text`` outside :data:`VOCABULARY` (numbers count as topical)."""
    return [w for w in _words(text) if w not in VOCABULARY]


def is_short(text: str) -> bool:
    """Whether a turn is short enough to be a follow-up at all (:data:`MAX_WORDS`)."""
    return 0 < len(_words(text)) <= MAX_WORDS


def is_follow_up(text: str) -> bool:
    """Whether a user turn after an answer continues that answer rather than asking anew."""
    words = _words(text)
    topical = sum(w not in VOCABULARY for w in words)
    return 0 < len(words) <= MAX_WORDS and topical <= MAX_TOPICAL_WORDS

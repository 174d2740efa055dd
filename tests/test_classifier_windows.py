"""Views of long conversations (steerguard.views), on the real tokenizer."""

from __future__ import annotations

from typing import Any

import pytest

from steerguard.errors import TooLong
from steerguard.model.chat import Conversation, normalise_request
from steerguard.views import Windower, WindowSettings

LIMIT = 64


@pytest.fixture(scope="module")
def windower(tiny_host: Any) -> Windower:
    tok = tiny_host.tokenizer
    settings = WindowSettings(
        max_prompt_tokens=LIMIT,
        max_total_tokens=2000,
        overlap_tokens=8,
        framing_tokens=len(tiny_host.token_ids(normalise_request("x"))) + 8,
        max_token_bytes=max(len(t) for t in tok.get_vocab()),
    )
    return Windower(
        settings,
        count=lambda conv: len(tiny_host.token_ids(conv)),
        tokenize_text=lambda text: tok(text, add_special_tokens=False)["input_ids"],
        detokenize=lambda ids: tok.decode(ids),
    )


def conv(*turns: tuple[str, str]) -> Conversation:
    return normalise_request(messages=[{"role": r, "content": c} for r, c in turns])


def test_a_short_prompt_is_its_own_only_view(windower: Windower) -> None:
    c = normalise_request("How do I bake bread?")
    assert windower.views(c) == [c]


def test_every_view_fits_and_every_word_is_read(windower: Windower, tiny_host: Any) -> None:
    words = [f"w{i}" for i in range(300)]
    c = normalise_request(" ".join(words))
    views = windower.views(c)
    assert len(views) > 3
    assert all(len(tiny_host.token_ids(v)) <= LIMIT for v in views)
    read = " ".join(v.messages[-1].content for v in views)
    assert all(w in read for w in words)


def test_a_chat_is_read_turn_by_turn(windower: Windower) -> None:
    c = conv(
        ("system", "be nice"),
        ("user", "HARMFUL REQUEST"),
        ("assistant", "ok"),
        ("user", "please answer my previous question"),
    )
    views = windower.views(c)
    assert [[(m.role, m.content) for m in v.messages] for v in views] == [
        [("system", "be nice"), ("user", "HARMFUL REQUEST")],
        [("system", "be nice"), ("user", "please answer my previous question")],
    ]


def test_filler_turns_cannot_push_a_request_out(windower: Windower) -> None:
    turns = [("user", "HARMFUL REQUEST")] + [("user", f"filler turn number {i} " * 3) for i in range(9)]
    views = windower.views(conv(*turns))
    assert any(v.messages[-1].content == "HARMFUL REQUEST" for v in views)


def test_a_system_prompt_frames_every_view_and_a_long_one_is_judged_too(windower: Windower) -> None:
    short = conv(("system", "You are a bank clerk."), ("user", "x " * 200))
    assert all(v.messages[0].content == "You are a bank clerk." for v in windower.views(short))
    long_system = "HARMFUL SYSTEM TEXT " + "lorem ipsum " * 100
    views = windower.views(conv(("system", long_system), ("user", "hello")))
    assert any(
        v.messages[-1].role == "user" and "HARMFUL SYSTEM TEXT" in v.messages[-1].content for v in views
    )


def test_past_the_hard_cap_is_too_long_before_tokenising(windower: Windower) -> None:
    with pytest.raises(TooLong, match="over the limit of 2000 tokens"):
        windower.views(normalise_request("x" * 2_000_000))
    with pytest.raises(TooLong):
        windower.views(normalise_request("word " * 2100))

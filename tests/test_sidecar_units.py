"""Pure pieces of the sidecar: JSON pointers, templates, adapters, context trimming, the SSE guard."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from sidecar import jsonptr, template
from sidecar.adapters import JsonAdapter, OpenAIAdapter
from sidecar.adapters.base import Ending, ReplyMeta
from sidecar.adapters.responses import ResponsesAdapter
from sidecar.conversation import ChatRequest, Message, context_for_classifier
from sidecar.http_errors import status_of
from sidecar.policy import parse_policy
from sidecar.response_check import MAX_CHOICES, decode_body, event_data, guard_event_stream, split_events
from sidecar.upstream import request_headers, response_headers
from steerguard.errors import InvalidInput, PayloadTooLarge, TooLong, UpstreamError

META = ReplyMeta(verdict="unsafe", unsafe=True, category="violence", score=0.9, action="block")


def test_json_pointer() -> None:
    doc = {"a": {"b/c": [10, {"~x": "y"}]}}
    assert jsonptr.resolve(doc, "") is doc
    assert jsonptr.resolve(doc, "/a/b~1c/1/~0x") == "y"
    for bad in ["/a/missing", "/a/b~1c/2", "/a/b~1c/01", "/a/b~1c/-"]:
        with pytest.raises(jsonptr.PointerError):
            jsonptr.resolve(doc, bad)
    with pytest.raises(jsonptr.PointerError):
        jsonptr.parse("a")
    jsonptr.replace(doc, "/a/b~1c/0", 11)
    assert doc["a"]["b/c"][0] == 11  # type: ignore[index]


def test_template_keeps_json_types_and_cannot_be_broken_out_of() -> None:
    tpl = {
        "answer": "{{reply}}",
        "meta": ["{{score}}", "{{unsafe}}", "cat={{category}}"],
        "id": "{{request:/id}}",
    }
    template.validate(tpl)
    out = template.render(tpl, META.as_values('", "injected": "x'), {"id": 42})
    assert out == {"answer": '", "injected": "x', "meta": [0.9, True, "cat=violence"], "id": 42}
    assert template.render("{{request:/nope}}", META.as_values("r"), {}) is None


def test_openai_parse() -> None:
    adapter = OpenAIAdapter()
    body = {
        "model": "gpt-x",
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_completion_tokens": 9,
        "temperature": 0.5,
        "messages": [
            {"role": "developer", "content": "rules"},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "a"},
                    {"type": "image_url"},
                    {"type": "text", "text": "b"},
                ],
            },
            {"role": "tool", "content": "tool output"},
        ],
    }
    chat = adapter.parse(json.dumps(body).encode())
    # Every role is judged: a tool's output is user-side text; a part with no text is reported.
    assert chat.messages == [
        Message("system", "rules"),
        Message("user", "a\nb"),
        Message("user", "tool output"),
    ]
    assert chat.unjudged == ("image_url",)
    assert chat.stream and chat.include_usage and chat.max_tokens == 9 and chat.temperature == 0.5
    assert chat.model == "gpt-x" and chat.prompt_chars == len("tool output")  # the latest user-side turn


def test_responses_replies_count_tokens_whole_and_streamed() -> None:
    adapter = ResponsesAdapter()
    chat = adapter.parse(b'{"model": "m", "input": "hi"}')
    reply = json.loads(adapter.reply(chat, "no", META, Ending("stop", 5, 2)).body)
    assert reply["object"] == "response" and reply["output"][0]["content"][0]["text"] == "no"
    assert reply["usage"] == {"input_tokens": 5, "output_tokens": 2, "total_tokens": 7}
    fmt = adapter.stream_formatter(chat)
    events, _ = split_events(fmt.start() + fmt.delta("n") + fmt.delta("o") + fmt.finish("length", 3, 1))
    done = json.loads(event_data(events[-1]))  # type: ignore[arg-type]
    assert done["type"] == "response.incomplete"
    assert done["response"]["output"][0]["content"][0]["text"] == "no"
    assert done["response"]["usage"] == {"input_tokens": 3, "output_tokens": 1, "total_tokens": 4}


def test_openai_replies_have_the_api_shape() -> None:
    adapter = OpenAIAdapter()
    chat = adapter.parse(b'{"model": "m", "messages": [{"role": "user", "content": "hi"}]}')
    reply = json.loads(adapter.reply(chat, "no", META).body)
    assert reply["object"] == "chat.completion" and reply["model"] == "m"
    assert reply["id"].startswith("chatcmpl-")
    assert reply["choices"][0]["message"] == {"role": "assistant", "content": "no", "refusal": None}
    chat.include_usage = True
    fmt = adapter.stream_formatter(chat)
    raw = fmt.start() + fmt.delta("x") + fmt.finish("stop", 3, 1)
    events, rest = split_events(raw)
    assert rest == b""
    datas = [event_data(e) for e in events]
    assert datas[-1] == b"[DONE]"
    usage = json.loads(datas[-2])  # type: ignore[arg-type]
    assert usage["choices"] == [] and usage["usage"]["total_tokens"] == 4
    assert adapter.stream_answer_delta(datas[1]) == {0: "x"}  # type: ignore[arg-type]
    doc = {"choices": [{"message": {"content": "bad"}}, {"message": {"content": "worse"}}]}
    assert adapter.answer_text(doc) == "bad\n\nworse"
    replaced = json.loads(adapter.replace_answer(doc, "ok"))
    assert [c["message"]["content"] for c in replaced["choices"]] == ["ok", "ok"]


def test_json_adapter() -> None:
    policy = parse_policy(
        {
            "routes": [
                {
                    "path": "/ask",
                    "adapter": "json",
                    "prompt_pointer": "/q/text",
                    "history_pointer": "/h",
                    "response_pointer": "/out/answer",
                    "reply_template": {"out": {"answer": "{{reply}}"}},
                }
            ]
        }
    )
    adapter = JsonAdapter(policy.routes[0])
    chat = adapter.parse(b'{"q": {"text": "hello"}, "h": [{"role": "assistant", "content": "earlier"}]}')
    assert chat.messages == [Message("assistant", "earlier"), Message("user", "hello")]
    assert json.loads(adapter.reply(chat, "r", META).body) == {"out": {"answer": "r"}}
    assert adapter.answer_text({"out": {"answer": "a"}}) == "a"
    assert adapter.answer_text({"out": {}}) is None
    for bad in [
        b'{"q": {}}',
        b'{"q": {"text": 3}}',
        b'{"q": {"text": "x"}, "h": "no"}',
        b'{"q": {"text": "x"}, "h": [1]}',
    ]:
        with pytest.raises(InvalidInput):
            adapter.parse(bad)


def test_context_keeps_every_turn_and_judges_trailing_ones_as_user_turns() -> None:
    msgs = [Message("system", "s" * 10)] + [
        Message(r, f"{r}{i}" * 5) for i in range(6) for r in ("user", "assistant")
    ]
    msgs.append(Message("system", "a system message placed last"))
    ctx = context_for_classifier(msgs, max_messages=50, max_chars=10_000)
    assert ctx[:-2] == msgs[:-2]  # nothing dropped, the system prompt first
    assert ctx[-2:] == [Message("user", msgs[-2].content), Message("user", msgs[-1].content)]
    with pytest.raises(TooLong, match="over the policy's limits"):
        context_for_classifier(msgs, max_messages=3, max_chars=10_000)
    with pytest.raises(TooLong):
        context_for_classifier(msgs, max_messages=50, max_chars=20)
    assert context_for_classifier([Message("assistant", "a")], max_messages=5, max_chars=10) == []


def test_header_filtering() -> None:
    headers = [
        ("Host", "sidecar:8080"),
        ("Connection", "keep-alive, X-Hop"),
        ("X-Hop", "1"),
        ("Transfer-Encoding", "chunked"),
        ("Authorization", "Bearer t"),
        ("Set-Cookie", "a=1"),
        ("Set-Cookie", "b=2"),
        ("Content-Length", "5"),
    ]
    out = request_headers(headers)
    assert list(out.items()) == [
        ("Authorization", "Bearer t"),
        ("Set-Cookie", "a=1"),
        ("Set-Cookie", "b=2"),
        ("Content-Length", "5"),
    ]
    assert "Content-Length" not in response_headers(headers, keep_length=False)
    assert response_headers(headers, keep_length=True).getall("Set-Cookie") == ["a=1", "b=2"]


def test_error_statuses() -> None:
    assert status_of(InvalidInput("x")) == (400, "invalid_request")
    assert status_of(PayloadTooLarge("x")) == (413, "payload_too_large")
    assert status_of(UpstreamError("x")) == (502, "upstream_error")


def test_decode_body() -> None:
    import gzip
    import zlib

    assert decode_body(gzip.compress(b"abc"), "gzip") == b"abc"
    assert decode_body(zlib.compress(b"abc"), "deflate") == b"abc"
    assert decode_body(b"abc", None) == b"abc"
    assert decode_body(b"abc", "br") is None


def _sse(texts: list[str]) -> list[bytes]:
    chunks = [
        b'data: {"id":"up-1","model":"m","choices":[{"delta":{"content":'
        + json.dumps(t).encode()
        + b"}}]}\n\n"
        for t in texts
    ]
    return chunks + [b"data: [DONE]\n\n"]


async def _feed(chunks: list[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        # Split each event across two reads: the guard must reassemble them.
        yield chunk[:7]
        yield chunk[7:]


async def _run_guard(
    texts: list[str], verdicts: list[bool | None], *, fail_closed: bool = True, window: int = 4
):
    written: list[bytes] = []
    judged: list[str] = []

    async def write(data: bytes) -> None:
        written.append(data)

    async def judge(answer: str) -> bool | None:
        judged.append(answer)
        return verdicts[min(len(judged), len(verdicts)) - 1]

    adapter = OpenAIAdapter()
    chat = ChatRequest(messages=[Message("user", "q")], document={})
    outcome = await guard_event_stream(
        _feed(_sse(texts)),
        write,
        lambda choice: judge,
        adapter,
        window_chars=window,
        max_window_bytes=1 << 16,
        replacement=lambda cid, model: (
            adapter.stream_formatter(chat, cid, model).delta("REPLACED")
            + adapter.stream_formatter(chat, cid, model).finish("content_filter")
        ),
        error_event=lambda: adapter.stream_formatter(chat).error("unchecked"),
        fail_closed=fail_closed,
    )
    return outcome, b"".join(written), judged


async def test_stream_guard_releases_safe_windows_unchanged() -> None:
    outcome, out, judged = await _run_guard(["abcd", "efgh", "ij"], [True])
    assert out == b"".join(_sse(["abcd", "efgh", "ij"]))
    assert judged == ["abcd", "efgh", "ij"]  # each check sends only the new text (ClassifyStream)
    assert outcome.checks == 3 and not outcome.replaced


async def test_stream_guard_replaces_an_unsafe_window() -> None:
    outcome, out, judged = await _run_guard(["abcd", "evil", "more"], [True, False])
    assert outcome.replaced
    assert b"evil" not in out and b"more" not in out
    assert out.startswith(_sse(["abcd"])[0])
    assert b'"id":"up-1"' in out.split(b"\n\n")[1]  # the replacement keeps the upstream's id
    assert b"REPLACED" in out and out.endswith(b"data: [DONE]\n\n")


async def test_stream_guard_failure_modes() -> None:
    outcome, out, _ = await _run_guard(["abcd", "efgh"], [None], fail_closed=True)
    assert outcome.failed and b"abcd" not in out and b"unchecked" in out
    outcome, out, _ = await _run_guard(["abcd", "efgh"], [None], fail_closed=False)
    assert outcome.unchecked and out == b"".join(_sse(["abcd", "efgh"]))


async def test_stream_guard_judges_each_choice_apart_up_to_a_cap() -> None:
    """Each choice of an ``n`` > 1 stream gets a judge of its own; one past the cap cannot be judged."""

    def events(choices: int) -> list[bytes]:
        body = [{"choices": [{"index": i, "delta": {"content": f"c{i}"}}]} for i in range(choices)]
        return [b"data: " + json.dumps(e).encode() + b"\n\n" for e in body] + [b"data: [DONE]\n\n"]

    async def run(choices: int, fail_closed: bool) -> tuple[Any, dict[int, list[str]]]:
        judged: dict[int, list[str]] = {}

        def judge(choice: int) -> Any:
            async def safe(text: str) -> bool:
                judged.setdefault(choice, []).append(text)
                return True

            return safe

        async def write(_data: bytes) -> None:
            return None

        adapter = OpenAIAdapter()
        outcome = await guard_event_stream(
            _feed(events(choices)), write, judge, adapter, window_chars=1000, max_window_bytes=1 << 16,
            replacement=lambda cid, model: b"", error_event=lambda: b"error", fail_closed=fail_closed,
        )  # fmt: skip
        return outcome, judged

    outcome, judged = await run(MAX_CHOICES, fail_closed=True)
    assert judged == {i: [f"c{i}"] for i in range(MAX_CHOICES)} and not outcome.failed
    outcome, judged = await run(MAX_CHOICES + 1, fail_closed=True)
    assert outcome.failed and MAX_CHOICES not in judged
    outcome, _ = await run(MAX_CHOICES + 1, fail_closed=False)
    assert outcome.unchecked and not outcome.failed


def test_verdict_cache_is_bounded_and_expires(monkeypatch: pytest.MonkeyPatch) -> None:
    from sidecar import judge as verdict_cache
    from steerguard.v1 import common_pb2

    now = [100.0]
    monkeypatch.setattr(verdict_cache.time, "monotonic", lambda: now[0])
    cache = verdict_cache.RecentVerdicts(max_entries=2, ttl_s=10)
    keys = [verdict_cache.cache_key([Message("user", str(i))], None) for i in range(3)]
    assert keys[0] != verdict_cache.cache_key([Message("user", "0")], 0.5)
    for i, key in enumerate(keys):
        cache.put(key, common_pb2.Verdict(score=i / 10))
    assert len(cache) == 2 and cache.get(keys[0]) is None
    assert cache.get(keys[2]).score == pytest.approx(0.2)  # type: ignore[union-attr]
    now[0] += 11
    assert cache.get(keys[2]) is None
    assert not verdict_cache.RecentVerdicts(100, 0).enabled

"""Judging the upstream's answer before the client sees it.

Whole responses are read (bounded), judged once and replaced when unsafe.
Server-sent-event streams are relayed event by event, but at most a window of
answer text (``window_chars``, and ``max_window_bytes`` of events) is held
back: each time the window fills, its text goes to the classifier's
``ClassifyStream`` call for this answer, which keeps what it has read (so each
check costs only the new text, and an answer of any length can be judged);
safe releases the held events unchanged, unsafe drops them and ends the stream
with a replacement. Neither the answer nor the rest of the stream is buffered.
"""

from __future__ import annotations

import asyncio
import json
import re
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from sidecar.adapters.base import Adapter
from sidecar.exchange import H_RESPONSE, Exchange, Outcomes
from sidecar.http_errors import ClassifierUnavailable
from sidecar.judge import AnswerJudge
from sidecar.judge import Judge as JudgeService
from sidecar.upstream import response_headers, stream_back
from steerguard.errors import UpstreamError

_EVENT_END = re.compile(rb"\r\n\r\n|\n\n|\r\r")


def split_events(buffer: bytes) -> tuple[list[bytes], bytes]:
    """Complete SSE events (each with its terminating blank line) and the remainder."""
    events: list[bytes] = []
    start = 0
    for match in _EVENT_END.finditer(buffer):
        events.append(buffer[start : match.end()])
        start = match.end()
    return events, buffer[start:]


def event_data(event: bytes) -> bytes | None:
    """The ``data:`` field of one event (lines joined with newlines), or None."""
    lines = [line for line in re.split(rb"\r\n|\n|\r", event) if line.startswith(b"data:")]
    if not lines:
        return None
    return b"\n".join(line[6:] if line.startswith(b"data: ") else line[5:] for line in lines)


def decode_body(body: bytes, encoding: str | None) -> bytes | None:
    """Undo gzip/deflate content coding to read an answer; None for codings not understood."""
    if not encoding or encoding.lower() == "identity":
        return body
    if encoding.lower() in {"gzip", "x-gzip", "deflate"}:
        try:
            return zlib.decompressobj(wbits=47).decompress(body)
        except zlib.error:
            try:
                return zlib.decompress(body, wbits=-15)
            except zlib.error:
                return None
    return None


# judge(new_text) -> True when the answer so far is safe, False unsafe, None could not judge.
Judge = Callable[[str], Awaitable[bool | None]]


@dataclass
class StreamOutcome:
    """What happened to a checked stream."""

    checks: int = 0
    replaced: bool = False
    failed: bool = False
    unchecked: bool = False


# An answer streamed as this many choices (``n``) at most is judged choice by choice, each in a
# ClassifyStream of its own. More are not judged (the route's fail mode applies): each holds one of
# the classifier's streams (``--max-streams``, 32), so one request could take them all.
MAX_CHOICES = 4


@dataclass
class _Held:
    """What a checked stream holds back: events, and per answer (choice) its text not yet judged."""

    events: list[bytes] = field(default_factory=list)
    size: int = 0
    chars: int = 0
    texts: dict[int, list[str]] = field(default_factory=dict)

    def add(self, event: bytes, texts: dict[int, str]) -> None:
        self.events.append(event)
        self.size += len(event)
        for key, text in texts.items():
            self.texts.setdefault(key, []).append(text)
            self.chars += len(text)

    async def verdict(self, judge: Callable[[int], Judge], outcome: StreamOutcome) -> bool | None:
        """The held texts' verdict: False if any answer is unsafe, None if one could not be judged."""
        verdicts = []
        for key, texts in self.texts.items():
            outcome.checks += 1
            verdicts.append(await judge(key)("".join(texts)) if 0 <= key < MAX_CHOICES else None)
        return False if False in verdicts else None if None in verdicts else True


async def guard_event_stream(
    chunks: AsyncIterator[bytes],
    write: Callable[[bytes], Awaitable[None]],
    judge: Callable[[int], Judge],
    adapter: Adapter,
    *,
    window_chars: int,
    max_window_bytes: int,
    replacement: Callable[[str | None, str | None], bytes],
    error_event: Callable[[], bytes],
    fail_closed: bool,
) -> StreamOutcome:
    """Relay ``chunks`` through ``write`` holding back at most one window of answer.

    ``judge(choice)`` judges that answer's new text (each choice of an answer
    streamed as several is judged apart: interleaved, they would read as one
    garbled text); ``replacement(completion_id, model)`` gives the events that
    end a stream whose answer was judged unsafe; ``error_event()`` those that
    end one the classifier could not judge when failing closed.
    """
    outcome = StreamOutcome()
    held = _Held()
    ident: tuple[str | None, str | None] = (None, None)
    buffer = b""

    async def checkpoint() -> bool:
        """Judge the answer so far; True to go on."""
        nonlocal held
        safe = await held.verdict(judge, outcome) if held.texts else True
        if safe is False:
            outcome.replaced = True
            await write(replacement(*ident))
            return False
        if safe is None:
            if fail_closed:
                outcome.failed = True
                await write(error_event())
                return False
            outcome.unchecked = True
        if held.events:
            await write(b"".join(held.events))
        held = _Held()
        return True

    identity = getattr(adapter, "stream_identity", None)
    async for chunk in chunks:
        buffer += chunk
        events, buffer = split_events(buffer)
        for event in events:
            data = event_data(event)
            texts: dict[int, str] = {}
            if data is not None and data.strip() != b"[DONE]":
                if ident == (None, None) and identity is not None:
                    ident = identity(data)
                texts = adapter.stream_answer_delta(data)
            held.add(event, texts)
            if (held.chars >= window_chars or held.size >= max_window_bytes) and not await checkpoint():
                return outcome
        if len(buffer) > max_window_bytes:
            # One event larger than the window cannot be judged within the bound.
            if not await checkpoint():
                return outcome
            if fail_closed:
                outcome.failed = True
                await write(error_event())
                return outcome
            outcome.unchecked = True
            await write(buffer)
            buffer = b""
    if buffer:
        held.add(buffer, {})
    await checkpoint()
    return outcome


# -- the check, as the request flow runs it ------------------------------------------------


class AnswerCheck:
    """Judges an upstream answer (whole JSON or SSE stream) and relays, replaces or refuses it."""

    def __init__(self, judge: JudgeService, outcomes: Outcomes) -> None:
        self.judge = judge
        self.outcomes = outcomes

    def applies(self, ex: Exchange, upstream: aiohttp.ClientResponse) -> bool:
        return ex.route.response_check.enabled and 200 <= upstream.status < 300

    async def run(self, ex: Exchange, upstream: aiohttp.ClientResponse) -> web.StreamResponse | None:
        """The checked response, or None when it holds nothing to check (no body).

        An answer in a type the check cannot read (plain text, NDJSON, none
        named) is not relayed as if judged: it follows the route's fail mode,
        marked ``unchecked`` when it goes through.
        """
        content_type = upstream.headers.get("Content-Type", "")
        if mime_of(content_type) == "text/event-stream":
            return await self.check_stream(ex, upstream)
        if is_json(content_type):
            return await self.check_body(ex, upstream)
        if upstream.status == 204 or upstream.content_length == 0:
            return None
        return await self._unchecked_stream(ex, upstream)

    def _text(self, ex: Exchange) -> str:
        return ex.route.response_check.message or ex.policy.refusal_message

    async def _safe(self, ex: Exchange, answer: str) -> bool | None:
        """True safe, False unsafe, None when the classifier could not judge."""
        judgement = await self.judge.judge(
            ex.trace, "response", ex.context, answer, threshold=answer_threshold(ex)
        )
        return None if judgement.verdict is None else not judgement.verdict.unsafe

    async def _read(self, ex: Exchange, upstream: aiohttp.ClientResponse) -> bytes | web.Response:
        """The answer's bytes, up to one past the limit; or the error response when the upstream broke."""
        limit = ex.route.response_check.max_body_bytes
        raw = bytearray()
        try:
            while len(raw) <= limit:
                chunk = await upstream.content.readany()
                if not chunk:
                    break
                raw += chunk
        except (aiohttp.ClientError, asyncio.TimeoutError):
            upstream.close()
            self.outcomes.failure(ex.trace, "upstream", "mid_response")
            return self.outcomes.error(ex.trace, UpstreamError("chatbot failed mid-response"), ex.marks)
        return bytes(raw)

    async def check_body(self, ex: Exchange, upstream: aiohttp.ClientResponse) -> web.StreamResponse:
        """Read a JSON answer (bounded), judge it, replace it when unsafe."""
        raw = await self._read(ex, upstream)
        if isinstance(raw, web.Response):
            return raw
        document: Any = None
        safe: bool | None = None
        oversize = len(raw) > ex.route.response_check.max_body_bytes
        if oversize:
            upstream.close()
        else:
            upstream.release()
            decoded = decode_body(raw, upstream.headers.get("Content-Encoding"))
            try:
                document = json.loads(decoded) if decoded is not None else None
            except (UnicodeDecodeError, ValueError):
                document = None
            answer = ex.adapter.answer_text(document) if document is not None else None
            if answer is None and decoded is not None and document is not None:
                # An answer-less body (an error object, say) has nothing to judge.
                return self.relay_bytes(ex, upstream, raw, "unchecked")
            safe = await self._safe(ex, answer) if answer is not None else None
        if safe is True:
            return self.relay_bytes(ex, upstream, raw, "safe")
        if safe is None:
            if ex.route.on_classifier_error.closed_on_outage or oversize:
                failure = ClassifierUnavailable("the answer could not be checked")
                return self.outcomes.error(ex.trace, failure, {**ex.marks, H_RESPONSE: "unknown"})
            return self.relay_bytes(ex, upstream, raw, "unknown")
        self.outcomes.metrics.actions.labels("replace_response", "false").inc()
        ex.trace.fields["response_action"] = "replace"
        body = ex.adapter.replace_answer(document, self._text(ex))
        headers = response_headers(upstream.headers.items(), keep_length=False)
        headers.popall("Content-Encoding", None)
        response = web.Response(status=upstream.status, body=body, headers=headers)
        response.headers.update({**ex.marks, H_RESPONSE: "unsafe"})
        return self.outcomes.finish(ex.trace, response)

    def relay_bytes(
        self, ex: Exchange, upstream: aiohttp.ClientResponse, body: bytes, verdict: str
    ) -> web.StreamResponse:
        headers = response_headers(upstream.headers.items(), keep_length=False)
        response = web.Response(status=upstream.status, reason=upstream.reason, body=body, headers=headers)
        response.headers.update({**ex.marks, H_RESPONSE: verdict})
        return self.outcomes.finish(ex.trace, response)

    async def _unchecked_stream(self, ex: Exchange, upstream: aiohttp.ClientResponse) -> web.StreamResponse:
        """An answer the check cannot read (a compressed stream, a type it does not know): refused
        failing closed, else relayed marked unchecked."""
        if ex.route.on_classifier_error.closed_on_outage:
            upstream.close()
            failure = ClassifierUnavailable("the answer could not be checked")
            return self.outcomes.error(ex.trace, failure, ex.marks)
        relayed, relay_failed = await stream_back(ex.request, upstream, {**ex.marks, H_RESPONSE: "unchecked"})
        if relay_failed:
            self.outcomes.failure(ex.trace, relay_failed, "mid_response")
        return self.outcomes.finish(ex.trace, relayed)

    async def check_stream(self, ex: Exchange, upstream: aiohttp.ClientResponse) -> web.StreamResponse:
        """Relay an SSE answer holding back one window of text while it is judged."""
        if upstream.headers.get("Content-Encoding", "identity").lower() != "identity":
            return await self._unchecked_stream(ex, upstream)
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
        response.headers.extend(response_headers(upstream.headers.items(), keep_length=False))
        response.headers.update({**ex.marks, H_RESPONSE: "streaming"})
        failed = complete = False
        try:
            await response.prepare(ex.request)
            outcome = await self._guard(ex, upstream, response)
            await response.write_eof()
            complete = not (outcome.replaced or outcome.failed)
            ex.trace.fields.update(response_checks=outcome.checks, response_replaced=outcome.replaced)
            if outcome.replaced:
                self.outcomes.metrics.actions.labels("replace_response", "false").inc()
        except ConnectionResetError:  # before ClientError: aiohttp's reset error is both
            failed = True
            self.outcomes.failure(ex.trace, "client", "mid_response")
        except (aiohttp.ClientError, asyncio.TimeoutError):
            failed = True
            self.outcomes.failure(ex.trace, "upstream", "mid_response")
        finally:
            if complete:
                upstream.release()
            else:
                upstream.close()  # stops reading the rest of a replaced answer
            if failed and ex.request.transport is not None:
                ex.request.transport.close()
        return self.outcomes.finish(ex.trace, response)

    async def _guard(
        self, ex: Exchange, upstream: aiohttp.ClientResponse, response: web.StreamResponse
    ) -> StreamOutcome:
        chat, adapter, refusal = ex.parsed, ex.adapter, self._text(ex)

        def replacement(completion_id: str | None, model: str | None) -> bytes:
            fmt = adapter.stream_formatter(chat, completion_id, model)
            return bytes(fmt.delta(refusal) + fmt.finish("content_filter", 0, 0))

        def error_event() -> bytes:
            return bytes(adapter.stream_formatter(chat).error("the answer could not be checked"))

        async def chunks() -> AsyncIterator[bytes]:
            while True:
                chunk = await upstream.content.readany()
                if not chunk:
                    return
                yield chunk

        check = ex.route.response_check
        streams: dict[int, AnswerJudge] = {}  # one ClassifyStream per answer (choice), opened as it starts

        def judge(choice: int) -> Judge:
            if choice not in streams:
                streams[choice] = self.judge.answer_stream(ex.trace, ex.context, answer_threshold(ex))
            return streams[choice].safe

        try:
            return await guard_event_stream(
                chunks(),
                response.write,
                judge,
                adapter,
                window_chars=check.window_chars,
                max_window_bytes=check.max_window_bytes,
                replacement=replacement,
                error_event=error_event,
                fail_closed=ex.route.on_classifier_error.closed_on_outage,
            )
        finally:
            for stream in streams.values():
                stream.close()


def answer_threshold(ex: Exchange) -> float | None:
    """An answer has no category: the route's cut, else the policy's (None: the bundle's)."""
    return ex.route.threshold if ex.route.threshold is not None else ex.policy.threshold


def mime_of(content_type: str) -> str:
    """A Content-Type's media type, lower-cased, without its parameters."""
    return content_type.split(";", 1)[0].strip().lower()


def is_json(content_type: str) -> bool:
    mime = mime_of(content_type)
    return mime == "application/json" or mime.endswith("+json")

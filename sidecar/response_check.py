"""Judging the upstream's answer before the client sees it.

Whole responses are read (bounded), judged once and replaced when unsafe.
Server-sent-event streams are relayed event by event, but at most a window of
answer text (``window_chars``, and ``max_window_bytes`` of events) is held
back: each time the window fills, the answer so far is judged; safe releases
the held events unchanged, unsafe drops them and ends the stream with a
replacement. The rest of the stream is never buffered.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from sidecar.adapters.base import Adapter

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


# judge(answer_so_far) -> True safe, False unsafe, None could not judge.
Judge = Callable[[str], Awaitable[bool | None]]


@dataclass
class StreamOutcome:
    """What happened to a checked stream."""

    checks: int = 0
    replaced: bool = False
    failed: bool = False
    unchecked: bool = False


async def guard_event_stream(
    chunks: AsyncIterator[bytes],
    write: Callable[[bytes], Awaitable[None]],
    judge: Judge,
    adapter: Adapter,
    *,
    window_chars: int,
    max_window_bytes: int,
    replacement: Callable[[str | None, str | None], bytes],
    error_event: Callable[[], bytes],
    fail_closed: bool,
) -> StreamOutcome:
    """Relay ``chunks`` through ``write`` holding back at most one window of answer.

    ``replacement(completion_id, model)`` gives the events that end a stream
    whose answer was judged unsafe; ``error_event()`` those that end one the
    classifier could not judge when failing closed.
    """
    outcome = StreamOutcome()
    held: list[bytes] = []
    held_bytes = 0
    pending_chars = 0
    answer: list[str] = []
    ident: tuple[str | None, str | None] = (None, None)
    buffer = b""

    async def checkpoint() -> bool:
        """Judge the answer so far; True to go on."""
        nonlocal held, held_bytes, pending_chars
        if pending_chars:
            outcome.checks += 1
            safe = await judge("".join(answer))
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
        if held:
            await write(b"".join(held))
        held, held_bytes, pending_chars = [], 0, 0
        return True

    identity = getattr(adapter, "stream_identity", None)
    async for chunk in chunks:
        buffer += chunk
        events, buffer = split_events(buffer)
        for event in events:
            data = event_data(event)
            if data is not None and data.strip() != b"[DONE]":
                if ident == (None, None) and identity is not None:
                    ident = identity(data)
                text = adapter.stream_answer_delta(data)
                if text:
                    answer.append(text)
                    pending_chars += len(text)
            held.append(event)
            held_bytes += len(event)
            if (pending_chars >= window_chars or held_bytes >= max_window_bytes) and not await checkpoint():
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
        held.append(buffer)
    await checkpoint()
    return outcome

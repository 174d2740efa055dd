"""Overlap mode: send the request to the chatbot while the classifier judges it, and hold the answer.

A cache miss costs the classifier's whole forward pass before the chatbot
even sees the request. With ``overlap: true`` on a route, the sidecar sends
the request upstream at once and judges it meanwhile; the chatbot's
response (status, headers, body) is held unread until the verdict:

- safe (or flagged, shadowed, failed open): the held response is relayed
  at once, as if it had been sent after the verdict;
- unsafe (blocked or steered) or refused: the upstream request is
  cancelled (its connection closed) and the client gets the policy's answer.

The price: the chatbot sees every request, unsafe ones included, and does
work that may be thrown away. Only for chatbots whose requests have no side
effects (no tools that act, no writes); off by default.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable

import aiohttp


class EarlySend:
    """One upstream request sent before its verdict: taken (relayed) or dropped (cancelled), once."""

    def __init__(self, sending: Awaitable[aiohttp.ClientResponse]) -> None:
        self._task: asyncio.Task[aiohttp.ClientResponse] = asyncio.ensure_future(sending)

    async def take(self) -> aiohttp.ClientResponse:
        """The chatbot's response (its headers read, body unread); raises as ``Upstream.send`` does."""
        return await self._task

    async def drop(self) -> None:
        """Cancel the request, or close the response it already got (the chatbot sees the disconnect)."""
        task = self._task
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
            return
        if not task.cancelled() and task.exception() is None:
            task.result().close()

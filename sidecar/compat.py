"""``deadline(seconds)``: asyncio.timeout on 3.11+, async_timeout (an aiohttp dependency) before."""

from __future__ import annotations

import sys

if sys.version_info >= (3, 11):
    from asyncio import timeout as deadline
else:  # pragma: no cover - Python 3.10
    from async_timeout import timeout as deadline

__all__ = ["deadline"]

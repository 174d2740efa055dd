"""The audit trail: every decision as one event, in a Redis Stream or on stdout.

Why: logs are for operators and get rotated and sampled; a platform team also
needs a durable, queryable record of what the guard decided and why. One
event per request (chat routes and pass-through alike), written when the
request ends: request id, time, route, status, verdict, score, category,
action, shadow, bundle id, policy version, failure, and a keyed hash of the
conversation the classifier judged (HMAC-SHA256 with a secret salt), never
any text of it. The hash lets an investigator confirm that a given text was
the one judged, without the stream revealing it: without the salt, a guessed
prompt cannot be checked against it.

Redis: ``XADD`` to ``--audit-stream`` (default ``steerguard:audit``), trimmed
to about ``--audit-maxlen`` entries (``MAXLEN ~``: Redis trims whole
macro-nodes, so the stream may hold a little more). Retention is that bound:
at 1,000,000 entries of ~400 bytes, about 0.4 GB of Redis memory; export with
``steerguard audit tail`` (or ``XRANGE``) before events age out. Writing never
delays a request: events queue (bounded) and one task writes them; events
that cannot be queued or written are counted
(``steerguard_sidecar_audit_events_total{result}``), never silently lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import secrets
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sidecar.conversation import Message
from sidecar.metrics import Metrics
from sidecar.settings import AuditSettings
from steerguard.logs import get_logger

log = get_logger("steerguard.sidecar")

QUEUE_SIZE = 10_000
# Trace fields an event carries when the request set them.
FIELDS = (
    "verdict",
    "score",
    "category",
    "hazard",
    "category_unsure",
    "action",
    "shadow",
    "bundle_id",
    "policy_version",
    "failure",
    "error",
)


def load_salt(settings: AuditSettings) -> bytes:
    """The HMAC key: the salt file's bytes, or a random one for this process (logged)."""
    if settings.salt_file:
        return Path(settings.salt_file).read_bytes().strip()
    if settings.redis_url or settings.stdout:
        log.warning("audit_salt_random", reason="no --audit-salt-file: hashes match only within this process")
    return secrets.token_bytes(32)


def conversation_hmac(salt: bytes, messages: Sequence[Message]) -> str:
    """Keyed hash of the judged conversation (roles and texts, canonical JSON)."""
    canon = json.dumps([[m.role, m.content] for m in messages], ensure_ascii=False, separators=(",", ":"))
    return hmac.new(salt, canon.encode("utf-8"), hashlib.sha256).hexdigest()


def event(request_id: str, route: str, status: int, fields: dict[str, Any]) -> dict[str, str]:
    """One request's event: flat strings, as a Redis Stream entry holds them."""
    out = {"request_id": request_id, "time_ms": str(int(time.time() * 1000)), "route": route}
    out["status"] = str(status)
    for name in FIELDS:
        value = fields.get(name)
        if value is not None and value != "":
            out[name] = str(value).lower() if isinstance(value, bool) else str(value)
    prompt_hmac = fields.get("prompt_hmac")
    if prompt_hmac:
        out["prompt_hmac"] = str(prompt_hmac)
    return out


class AuditTrail:
    """Queues events and writes them to Redis (one task) or stdout; ``record`` never blocks."""

    def __init__(self, settings: AuditSettings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.salt = load_salt(settings)
        self.enabled = bool(settings.redis_url or settings.stdout)
        self._queue: asyncio.Queue[dict[str, str]] = asyncio.Queue(QUEUE_SIZE)
        self._task: asyncio.Task[None] | None = None
        self._client: Any = None

    def start(self) -> None:
        """Connect (lazily) and start the writer; needs the running loop."""
        if self.settings.redis_url:
            import redis.asyncio as aioredis

            self._client = aioredis.Redis.from_url(self.settings.redis_url, socket_timeout=2.0)
            self._task = asyncio.create_task(self._write_loop())

    def record(self, entry: dict[str, str]) -> None:
        if not self.enabled:
            return
        if not self.settings.redis_url:
            print(json.dumps({"event": "audit", **entry}), flush=True, file=sys.stdout)
            self.metrics.audit_events.labels("written").inc()
            return
        try:
            self._queue.put_nowait(entry)
        except asyncio.QueueFull:
            self.metrics.audit_events.labels("dropped").inc()

    async def _write_loop(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while not self._queue.empty() and len(batch) < 256:
                batch.append(self._queue.get_nowait())
            try:
                await self._write(batch)
            finally:
                for _ in batch:
                    self._queue.task_done()

    async def _write(self, batch: list[dict[str, str]]) -> None:
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for entry in batch:
                    pipe.xadd(self.settings.stream, entry, maxlen=self.settings.maxlen, approximate=True)
                await pipe.execute()
            self.metrics.audit_events.labels("written").inc(len(batch))
        except Exception as exc:  # redis.RedisError, OSError: counted, the proxy goes on
            self.metrics.audit_events.labels("failed").inc(len(batch))
            log.warning("audit_write_failed", events=len(batch), error=type(exc).__name__)

    async def close(self, drain_s: float = 2.0) -> None:
        """Write what is queued (up to ``drain_s``), then disconnect."""
        if self._task is None:
            return
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._queue.join(), drain_s)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        await self._client.aclose()


def tail(url: str, stream: str, count: int, follow: bool, write: Any = print) -> int:
    """``steerguard audit tail``: the last ``count`` events as JSON lines, oldest first; then,
    with ``follow``, new ones as they arrive (until interrupted). Returns how many were written."""
    import redis

    client: Any = redis.Redis.from_url(url, decode_responses=True)  # its stubs type replies loosely
    try:
        entries = list(reversed(client.xrevrange(stream, count=count))) if count > 0 else []
        for entry_id, fields in entries:
            write(json.dumps({"id": entry_id, **fields}))
        written, last = len(entries), (entries[-1][0] if entries else "$")
        while follow:
            for _, items in client.xread({stream: last}, block=1000) or []:
                for entry_id, fields in items:
                    write(json.dumps({"id": entry_id, **fields}))
                    written, last = written + 1, entry_id
        return written
    finally:
        client.close()

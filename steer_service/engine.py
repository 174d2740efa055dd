"""The continuous-batching decode loop: one thread owns the model and every running row.

Each loop iteration:

1. **admit**: take waiting jobs into free rows (at most ``max_batch_size``),
   prefill them together with their own :class:`~steerguard.plan.BatchPlan`
   (so an AUTO/SCANS gate is decided inside their prompt pass, with no extra
   forward pass), then append them to the running batch
   (:meth:`DecodeBatch.extend`);
2. **emit**: pick each row's next token from the batch logits, stream its text,
   and retire rows that hit EOS, their ``max_new_tokens``, a cancellation or
   their deadline (:meth:`DecodeBatch.select` frees the row at once);
3. **step**: one decode step for the rows left, each with its own steering.

Steering hooks exist only inside each forward call (``apply_steering``
removes them in ``finally``), so after any request, failed or cancelled, the
model is exactly unsteered. A failing prefill fails only the joining rows; a
failing decode step fails the rows of that batch, drops its cache, and the
engine goes on with the next requests.

Models whose KV cache cannot take rows mid-flight (sliding-window layers)
fall back to batching only requests that arrive while the engine is idle.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from steer_service import metrics
from steer_service.config import SteerConfig
from steer_service.detok import TextStream
from steer_service.engine_base import EngineBase
from steer_service.jobs import Chunk, Job
from steerguard.bundle import Bundle
from steerguard.errors import DeadlineExceeded, NotReady, SteerguardError
from steerguard.generation import DecodeBatch, make_generator, pick_token, supports_row_merge
from steerguard.logs import get_logger
from steerguard.model.host import ModelHost
from steerguard.plan import Applied, BatchPlan

log = get_logger("steer_service.engine")


@dataclass
class EngineStats:
    """Counters for tests and benchmarks (Prometheus has the same for operators)."""

    prefills: int = 0
    steps: int = 0
    max_rows: int = 0
    joined_running: int = 0  # prefills appended to a batch that was already decoding
    failures: int = 0
    busy_cpu_seconds: float = 0.0  # engine-thread CPU time in prefills and steps (load-independent cost)


class _Row:
    """Per-row bookkeeping that lives beside the batch tensors."""

    def __init__(self, job: Job, applied: Applied, stream: TextStream) -> None:
        self.job = job
        self.applied = applied
        self.stream = stream
        self.generator = make_generator(job.sampling.seed)
        self.first_token_at: float | None = None

    @property
    def count(self) -> int:
        return len(self.stream.tokens)


class Engine(EngineBase):
    """Owns the model's decode loop; :meth:`submit` is safe from any thread."""

    def __init__(self, host: ModelHost, bundle: Bundle, config: SteerConfig) -> None:
        super().__init__(config, self._run, "steer-engine")
        self.host = host
        self.bundle = bundle
        self.stats = EngineStats()
        self._eos = host.eos_token_ids
        self._batch: DecodeBatch | None = None
        self._rows: list[_Row] = []
        self._merge_ok: bool | None = None  # learnt from the first prefill's cache

    # -- caller side -----------------------------------------------------------

    def _in_flight(self) -> int:
        return len(self._rows)

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until no row runs and nothing waits (its stats are then final)."""
        return self._idle.wait(timeout)

    @property
    def active_rows(self) -> int:
        return len(self._rows)

    @property
    def free_rows(self) -> int:
        return self.config.max_batch_size - len(self._rows)

    @property
    def queued(self) -> int:
        return len(self._pending)

    # -- engine thread -------------------------------------------------------------

    def _run(self) -> None:
        try:
            while True:
                joiners = self._take()
                if joiners is None:
                    break
                started = time.thread_time()
                if joiners:
                    self._admit(joiners)
                if self._rows:
                    self._advance()
                self.stats.busy_cpu_seconds += time.thread_time() - started
        except BaseException as exc:
            log.error("engine loop crashed", exc_info=exc)
            raise
        finally:
            self._shutdown()

    def _take(self) -> list[Job] | None:
        """Jobs to admit now (possibly none); ``None`` once closed."""
        with self._cond:
            while True:
                if self._closed or (self._draining and not self._pending and not self._rows):
                    return None
                self._drop_dead_pending()
                can_join = self._merge_ok is not False or not self._rows
                room = self.config.max_batch_size - len(self._rows)
                if self._pending and room > 0 and can_join:
                    taken = [self._pending.popleft() for _ in range(min(room, len(self._pending)))]
                    metrics.QUEUE_DEPTH.set(len(self._pending))
                    return taken
                if self._rows:
                    return []
                if not self._pending:
                    self._idle.set()
                self._cond.wait()

    def _drop_dead_pending(self) -> None:
        now = time.monotonic()
        alive = deque(j for j in self._pending if not (j.handle.cancelled or j.expired(now)))
        for job in self._pending:
            if job.handle.cancelled:
                job.handle.put(Chunk("", "cancelled", len(job.prompt_ids), 0))
                metrics.FINISHED.labels("cancelled").inc()
            elif job.expired(now):
                job.handle.put(DeadlineExceeded("deadline exceeded before generation started"))
                metrics.FINISHED.labels("deadline").inc()
        if len(alive) != len(self._pending):
            self._pending = alive
            metrics.QUEUE_DEPTH.set(len(alive))

    def _admit(self, jobs: list[Job]) -> None:
        """Prefill ``jobs`` with their own steering plan and append them to the batch."""
        try:
            prompts = self.host.pad([j.prompt_ids for j in jobs])
            plan = BatchPlan(self.bundle, [j.steering for j in jobs], self.host.identity.hidden_size)
            new = DecodeBatch.start(self.host, prompts, plan.state, plan.extra_layers)
        except Exception as exc:
            self._fail([(j, None) for j in jobs], exc, "prefill")
            return
        self.stats.prefills += 1
        if self._merge_ok is None:
            self._merge_ok = supports_row_merge(new.cache)
            if not self._merge_ok:
                log.warning("KV cache cannot take rows mid-flight: batching only simultaneous arrivals")
        rows = [_Row(j, plan.applied[i], TextStream(self.host.decode)) for i, j in enumerate(jobs)]
        for row in rows:
            metrics.REQUESTS.labels(row.applied.mode.value, row.applied.vector).inc()
        if self._batch is None:
            self._batch, self._rows = new, rows
            return
        try:
            self._batch.extend(new)
        except Exception as exc:
            self._fail([(r.job, r) for r in [*self._rows, *rows]], exc, "merge")
            self._batch, self._rows = None, []
            return
        self._rows = [*self._rows, *rows]
        self.stats.joined_running += 1

    def _advance(self) -> None:
        """Emit one token per row, retire finished rows, then run one decode step."""
        batch = self._batch
        assert batch is not None
        now = time.monotonic()
        greedy: torch.Tensor | None = None
        keep: list[int] = []
        feed: list[int] = []
        for i, row in enumerate(self._rows):
            job = row.job
            if job.handle.cancelled:
                self._finish(row, "cancelled", "", now)
                continue
            if job.expired(now):
                self._finish(row, "deadline", "", now, DeadlineExceeded("deadline exceeded"))
                continue
            if job.sampling.temperature <= 0:
                if greedy is None:
                    greedy = batch.logits.argmax(dim=-1)
                token = int(greedy[i])
            else:
                token = pick_token(batch.logits[i], job.sampling, row.generator)
            if token in self._eos and not self.config.ignore_eos:
                self._finish(row, "stop", row.stream.flush(), now)
                continue
            text = row.stream.push(token)
            metrics.TOKENS.inc()
            if row.first_token_at is None:
                row.first_token_at = now
                metrics.TTFT.observe(now - job.submitted)
            if row.count >= job.sampling.max_new_tokens:
                self._finish(row, "length", text + row.stream.flush(), now)
                continue
            if text:
                job.handle.put(Chunk(text))
            keep.append(i)
            feed.append(token)
        if not keep:
            self._batch, self._rows = None, []
            metrics.BATCH_ROWS.set(0)
            return
        if len(keep) < len(self._rows):
            batch.select(keep)
            self._rows = [self._rows[i] for i in keep]
        rows = len(self._rows)
        self.stats.max_rows = max(self.stats.max_rows, rows)
        metrics.BATCH_ROWS.set(rows)
        metrics.BATCH_OCCUPANCY.observe(rows / self.config.max_batch_size)
        started = time.perf_counter()
        try:
            batch.step(self.host, torch.tensor(feed, dtype=torch.long))
        except Exception as exc:
            self._fail([(r.job, r) for r in self._rows], exc, "decode")
            self._batch, self._rows = None, []
            metrics.BATCH_ROWS.set(0)
            return
        self.stats.steps += 1
        metrics.STEP_SECONDS.observe(time.perf_counter() - started)

    def _finish(self, row: _Row, reason: str, text: str, now: float, error: Exception | None = None) -> None:
        """End a row: its last chunk (or ``error``), metrics, and one log line without the prompt."""
        job = row.job
        job.handle.put(error or Chunk(text, reason, len(job.prompt_ids), row.count, row.applied))
        metrics.FINISHED.labels(reason).inc()
        ttft = None if row.first_token_at is None else row.first_token_at - job.submitted
        if row.first_token_at is not None and row.count > 1 and now > row.first_token_at:
            metrics.TOKENS_PER_SECOND.observe((row.count - 1) / (now - row.first_token_at))
        verdict = row.applied.verdict
        log.info(
            "generation finished",
            request_id=job.handle.id,
            prompt_sha256=job.digest,
            prompt_tokens=len(job.prompt_ids),
            completion_tokens=row.count,
            finish_reason=reason,
            mode=row.applied.mode.value,
            vector=row.applied.vector,
            unsafe=None if verdict is None else verdict.unsafe,
            ttft_seconds=None if ttft is None else round(ttft, 4),
            seconds=round(now - job.submitted, 4),
        )

    def _fail(self, jobs: Sequence[tuple[Job, _Row | None]], exc: Exception, stage: str) -> None:
        """End ``jobs`` with an error; the cause is logged here, the client sees a safe reason."""
        self.stats.failures += 1
        log.error("generation failed", stage=stage, rows=len(jobs), exc_info=exc)
        for job, _row in jobs:
            metrics.FINISHED.labels("error").inc()
            if isinstance(exc, SteerguardError):
                job.handle.put(type(exc)(exc.reason))
            else:
                job.handle.put(RuntimeError(f"generation failed during {stage}"))

    def _shutdown(self) -> None:
        with self._cond:
            self._closed = True
            pending, self._pending = list(self._pending), deque()
        rows, self._rows, self._batch = self._rows, [], None
        gone = NotReady("the steer service is shutting down")
        for job in [*(r.job for r in rows), *pending]:
            job.handle.put(NotReady(gone.reason))
        metrics.BATCH_ROWS.set(0)
        metrics.QUEUE_DEPTH.set(0)

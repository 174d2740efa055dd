"""ClassifierCore: verdicts for conversations, through the cache, single-flight and the batcher.

The path of one request:

1. the key ``prefix:bundle_id:sha256(normalised conversation)`` is looked up
   in the cache (a hit answers without tokenising);
2. a miss is tokenised and refused when over the token limit;
3. an identical miss already being computed is *joined* (single-flight), so
   N concurrent identical requests cost one forward pass;
4. otherwise it is queued to the micro-batcher, whose worker runs the model
   only up to the probe layer (early exit), starting after the chat template's
   shared prefix (:mod:`classifier_service.prefix`), and writes the verdicts
   back to the cache after answering.

The cache stores verdicts at the bundle's threshold; a per-request threshold
is applied on the way out (:meth:`Verdict.at_threshold`), so one entry serves
every threshold. Waiting honours the caller's deadline and cancellation; a
computation nobody waits for any more is cancelled before it reaches the model.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field, replace

import torch
from transformers import DynamicCache

from classifier_service import accelerated, metrics
from classifier_service import schedule as scheduling
from classifier_service.accelerated import CompiledPassages, CompiledTrunk
from classifier_service.answer_stream import AnswerStream, Locks
from classifier_service.batcher import MicroBatcher
from classifier_service.cache import VerdictCache, verdict_key
from classifier_service.cache.base import as_cached
from classifier_service.chunked import chunked_last_state
from classifier_service.config import BACKENDS, SCHEDULES, CoreConfig
from classifier_service.prefix import SharedPrefix
from steerguard import language
from steerguard.bundle import Bundle
from steerguard.errors import BundleError, DeadlineExceeded, InvalidInput, Overloaded, TooLong
from steerguard.logs import get_logger
from steerguard.messages import Message
from steerguard.model.activations import LayerStates, StopRule, last_token_states, states_with_spans
from steerguard.model.chat import Conversation
from steerguard.model.host import ModelHost
from steerguard.model.spans import Span, TurnMarkers, last_turn_content
from steerguard.passages import Passage, ender_ids, passage_scores
from steerguard.responses import AnswerRead, answer_readings, answer_windows, position_scores, reply
from steerguard.verdict import Verdict, verdicts_from_states
from steerguard.views import ViewPlan, Windower

log = get_logger("steerguard.classifier")


@dataclass(frozen=True)
class _Job:
    """One view (read at its last token by the probe), passage or answer window (by their heads).

    ``cost``: the tokens it runs (after the shared prefix where it applies).
    ``dropped`` is set when nobody waits for it any more: a long view
    stops between its chunks.
    """

    key: str
    token_ids: list[int]
    passage: Passage | None = None
    answer: AnswerRead | None = None
    cost: int = 0
    full: bool = False  # no early exit: the caller may judge below the bundle's cut
    span: Span = (0, 0)  # the last user turn's words (steerguard.model.spans), for the category head
    dropped: threading.Event = field(default_factory=threading.Event, compare=False)


@dataclass
class _Flight:
    """One computation in progress and how many requests wait for it."""

    key: str
    future: Future[Verdict]
    job: _Job
    waiters: int = 1


@dataclass
class _Pending:
    """The misses of one classify call: which flight answers which key."""

    flights: dict[str, _Flight] = field(default_factory=dict)
    landed: set[str] = field(default_factory=set)  # keys whose flight had already landed

    @dataclass(frozen=True)
    class View:
        """One thing to judge: a chat-framed conversation, a passage or an answer window; its cache key."""

        key: str
        conv: Conversation | None
        passage: Passage | None
        answer: AnswerRead | None = None
        full: bool = False  # see _Job.full


def _full_digest(digest: str) -> str:
    """The digest a view judged without the early exit is cached under (apart from the cascade's)."""
    return hashlib.sha256(f"full:{digest}".encode()).hexdigest()


class ClassifierCore:
    """Owns the model host, bundle, cache and batcher; thread-safe."""

    def __init__(
        self,
        host: ModelHost,
        bundle: Bundle,
        cache: VerdictCache | None,
        config: CoreConfig | None = None,
    ) -> None:
        self.host = host
        self.bundle = bundle
        self.cache = cache
        self.config = config or CoreConfig()
        if bundle.classifier_layers > host.loaded_layers:
            raise BundleError(
                f"bundle reads layers up to {bundle.classifier_layers - 1} but the model was loaded with "
                f"{host.loaded_layers} layers (load at least {bundle.classifier_layers})"
            )
        if not bundle.bundle_id:
            raise BundleError("the bundle has no bundle_id (save it before serving)")
        self._tokenizer_lock = host.tokenizer_lock  # shared with any other core on this host
        # The batcher's worker and the answer streams (of this core and of one being swapped out)
        # take turns on the model: hooks are shared.
        self._model_lock = host.forward_lock
        self._streams = threading.BoundedSemaphore(self.config.max_streams)
        self._flights: dict[str, _Flight] = {}
        # Re-entrant: a future's done-callbacks may run in the thread holding it.
        self._flights_lock = threading.RLock()
        self.forward_passes = 0
        self.prefix = SharedPrefix.for_host(host) if self.config.share_prefix else None
        self._cascade = bundle.cascade if self.config.cascade else None
        self._trunk = self._accelerated()
        self._passages = self._compiled_passages()
        self._markers = TurnMarkers.for_tokenizer(host.tokenizer) if bundle.reads_content else None
        self.windows = self._windower()
        # Segment-end tokens (a pass over the vocabulary), for the response probe's reads.
        self._enders = ender_ids(host.tokenizer) if bundle.response is not None else frozenset()
        self.batcher: MicroBatcher[_Job, Verdict] = MicroBatcher(
            self._run_batch,
            max_batch_size=self.config.max_batch_size,
            max_wait_seconds=self.config.max_batch_wait_ms / 1000.0,
            max_queue=self.config.max_queue,
            wait_fraction=self.config.batch_wait_fraction,
            max_step_tokens=self.config.max_step_tokens,
            max_queue_delay_seconds=self.config.max_queue_delay_ms / 1000.0,
            max_queue_delay_steps=self.config.max_queue_delay_steps,
            overload_wait_margin=self.config.overload_wait_margin,
            after_batch=self._store,
            name="classifier-batcher",
        )
        if self.config.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.config.schedule!r} ({', '.join(SCHEDULES)})")
        self.schedule = "packed"  # how steps are filled; auto decides in warm_up (scheduling.choose)
        if self.config.schedule == "single":
            self._use_schedule("single")

    # -- public ---------------------------------------------------------------

    @property
    def bundle_id(self) -> str:
        return self.bundle.bundle_id

    def key(self, conv: Conversation) -> str:
        return self._key(conv.digest())

    def _key(self, digest: str) -> str:
        c = self.config
        return verdict_key(c.cache_prefix, self.bundle.bundle_id, digest, c.cache_key_secret)

    def classify(
        self,
        convs: Sequence[Conversation],
        *,
        answers: Sequence[str | None] | None = None,
        thresholds: Sequence[float | None] | None = None,
        floors: Sequence[float | None] | None = None,
        deadline: float | None = None,
        cancelled: threading.Event | None = None,
        label_rows: bool = False,
    ) -> list[Verdict]:
        """One verdict per conversation, in order.

        A conversation longer than the model's window is judged as the views
        :mod:`steerguard.views` makes of it; its verdict is its
        highest-scoring view's. Where ``answers`` gives an answer, the verdict
        judges that answer as the assistant's reply to the conversation
        (:meth:`_answer_plan`). ``deadline`` is a :func:`time.monotonic`
        instant; ``cancelled`` is a fresh event the caller sets when its client
        goes away (the core sets it too, to wake itself, once the answer is
        ready). ``label_rows`` prefixes input errors with ``requests[i]:``
        (batch RPCs). ``floors``: the lowest cut each caller may apply to the
        score later (its threshold when not given); below the bundle's own
        cut, the early exit is skipped (:meth:`_needs_full`).
        """
        if not convs:
            return []
        replies = answers if answers is not None else [None] * len(convs)
        plans = [
            self._views(conv, reply, i if label_rows else None)
            for i, (conv, reply) in enumerate(zip(convs, replies, strict=True))
        ]
        cuts = floors if floors is not None else thresholds if thresholds is not None else [None] * len(convs)
        views = [
            [
                *self._view_jobs(p.read, self._needs_full(cut)),
                *self._passage_jobs(p.passages),
                *self._answer_jobs(p.answers),
            ]
            for p, cut in zip(plans, cuts, strict=True)
        ]
        judged = iter(self._judge([job for vs in views for job in vs], deadline, cancelled))
        out: list[Verdict] = []
        for i, vs in enumerate(views):
            got = [next(judged) for _ in vs]
            verdict = self._with_language(convs[i], got[plans[i].pick([v.score for v in got])])
            cut = thresholds[i] if thresholds is not None else None
            if cut is not None and cut != verdict.threshold:
                verdict = verdict.at_threshold(cut)
            metrics.VERDICTS.labels(category=verdict.category if verdict.unsafe else "safe").inc()
            if verdict.unsafe and verdict.category_unsure:
                metrics.CATEGORY_UNSURE.labels(category=verdict.category).inc()
            out.append(verdict)
        self._log(convs, out, [len(vs) for vs in views])
        return out

    @contextlib.contextmanager
    def answer_stream(
        self, conv: Conversation, threshold: float | None = None
    ) -> Iterator[Callable[[str], Verdict]]:
        """A judge for an answer to ``conv`` that arrives in pieces (``ClassifyStream``).

        Each call reads the answer's next text and returns the verdict on the
        answer so far (the highest score yet: once unsafe, it stays unsafe).
        With a response probe, a stream keeps its keys and values
        (:class:`~classifier_service.answer_stream.AnswerStream`), so each
        call costs only its own tokens; without one, each call judges the
        whole answer so far with :meth:`classify`. At most
        ``config.max_streams`` are open at once (``Overloaded`` past that);
        leaving the block frees the stream's memory.
        """
        if not self._streams.acquire(blocking=False):
            raise Overloaded(f"{self.config.max_streams} answer streams are open; try again later")
        metrics.OPEN_STREAMS.inc()
        try:
            read = self._stream_reader(conv)
            cut = self.bundle.threshold if threshold is None else threshold

            def judge(text: str) -> Verdict:
                score = read(text)
                return Verdict(score, score >= cut, "", {}, cut, self.bundle_id)

            yield judge
        finally:
            metrics.OPEN_STREAMS.dec()
            self._streams.release()

    def _stream_reader(self, conv: Conversation) -> Callable[[str], float]:
        """``read(text) -> highest score so far`` for one answer stream."""
        if self.bundle.response is not None:
            locks = Locks(self._tokenizer_lock, self._model_lock)
            ways = answer_readings(conv, self.bundle.response)
            streams = [AnswerStream(self.host, self.bundle, conv, self._enders, locks, way) for way in ways]

            def both(text: str) -> float:  # flagged only where every reading flags (ViewPlan.pick)
                return min([s.feed(text) for s in streams])

            return streams[0].feed if len(streams) == 1 else both
        parts: list[str] = []
        best = [0.0]

        def whole(text: str) -> float:
            if text:
                parts.append(text)
                (verdict,) = self.classify([conv], answers=["".join(parts)])
                best[0] = max(best[0], verdict.score)
            return best[0]

        return whole

    def _with_language(self, conv: Conversation, verdict: Verdict) -> Verdict:
        """The verdict naming the request's language and whether the bundle was calibrated for it."""
        if not self.config.identify_language:
            return verdict
        lang = language.detect(language.user_side_text(conv))
        calibrated = lang == language.UNDETERMINED or lang in self.bundle.manifest.calibrated_languages
        return replace(verdict, language=lang, language_calibrated=calibrated)

    def _views(self, conv: Conversation, answer: str | None, row: int | None) -> ViewPlan:
        try:
            with self._tokenizer_lock:
                return self.windows.plan(conv) if answer is None else self._answer_plan(conv, answer)
        except InvalidInput as exc:
            if row is not None:
                exc.reason = f"requests[{row}]: {exc.reason}"
            raise

    def _answer_plan(self, conv: Conversation, answer: str) -> ViewPlan:
        """An answer's windows under the response probe (any length, linear cost).

        A bundle without a response probe judges the answer as the prompt
        probe reads a request: in a user turn after the conversation.
        """
        if self.bundle.response is None:
            return self.windows.plan(Conversation((*conv.messages, Message("user", answer))))
        limit = self.config.max_total_tokens
        if len(answer) > limit * self.windows.s.max_token_bytes:
            raise TooLong(f"the answer is over the limit of {limit} tokens")
        info = self.bundle.response
        got = [reply(self.host, conv, answer, info.view, way) for way in answer_readings(conv, info)]
        if max(g.answer_tokens for g in got) > limit:
            raise TooLong(f"the answer is over the limit of {limit} tokens")
        reads = [answer_windows(self.host, g, self._enders) for g in got]
        counts = tuple(len(r) for r in reads) if len(reads) > 1 else ()
        return ViewPlan(answers=[w for r in reads for w in r], readings=counts)

    def _answer_jobs(self, reads: Sequence[AnswerRead]) -> list[_Pending.View]:
        return [_Pending.View(self._key(r.key()), None, None, r) for r in reads]

    def _view_jobs(self, convs: Sequence[Conversation], full: bool = False) -> list[_Pending.View]:
        # A view judged without the early exit has a key of its own: its cached verdict is the probe's.
        return [
            _Pending.View(self._key(_full_digest(c.digest()) if full else c.digest()), c, None, full=full)
            for c in convs
        ]

    def _needs_full(self, cut: float | None) -> bool:
        """True when a caller's cut is below the bundle's: the early exit was calibrated at the latter.

        An exited view's score is the early probe's, below its exit cut (at
        most the bundle's threshold), so it is safe at any cut at or above
        the bundle's; a lower cut needs the probe's own score.
        """
        return self._cascade is not None and cut is not None and cut < self.bundle.threshold

    def _passage_jobs(self, passages: Sequence[Passage]) -> list[_Pending.View]:
        return [_Pending.View(self._key(p.key()), None, p) for p in passages]

    def _judge(
        self, views: Sequence[_Pending.View], deadline: float | None, cancelled: threading.Event | None
    ) -> list[Verdict]:
        """Verdicts of views and passages, from the cache or the model, in order."""
        keys = [v.key for v in views]
        unique = list(dict.fromkeys(keys))
        found = self._lookup(unique)
        missing = [k for k in unique if found[k] is None]
        if missing:
            jobs = self._jobs(views, set(missing))
            found.update(self._compute(jobs, deadline, cancelled))
        verdicts = [found[k] for k in keys]
        assert all(v is not None for v in verdicts), "every view has a verdict, cached or computed"
        return [v for v in verdicts if v is not None]

    def _windower(self) -> Windower:
        """The views of long conversations, sized to this model's window and tokenizer."""
        c = self.config
        return Windower.for_host(
            self.host,
            c.max_prompt_tokens,
            c.max_total_tokens,
            c.window_overlap_tokens,
            self.bundle.passage,
            candidates=c.passage_candidates,
        )

    def warm_up(self) -> None:
        """Forward passes before reporting SERVING (first-call allocations, lazy init, and the
        compiled trunk's input lengths: ``CoreConfig.warm_lengths``)."""
        from steerguard.model.chat import normalise_request

        ids = self._token_ids(normalise_request("Hello"))
        with self._model_lock:
            self._probe_states([ids, ids[:-1]])
        if self._trunk is not None and self.config.warm_lengths > 0:
            self._trunk.warm(self.config.warm_lengths, ids[-1])
        self._choose_schedule()
        if self._passages is not None and self.bundle.passage is not None:
            self._passages.warm(self.bundle.passage.window_tokens)
        if self.config.identify_language:
            language.detect("Loading the language model once, before the first request.")

    def _choose_schedule(self) -> None:
        """``auto``: one prompt a step where the compiled trunk's lone pass is cheap enough against
        a packed step's share, timed here (classifier_service.schedule); else as configured."""
        from steerguard.model.chat import normalise_request

        c, timing = self.config, None
        if c.schedule == "auto" and self._trunk is not None and c.max_batch_size > 1:
            prompts = scheduling.sample_prompts(c.max_batch_size)
            rows = [self._token_ids(normalise_request(p)) for p in prompts]
            with self._model_lock:
                timing = scheduling.time_paths(self._probe_states, rows)
        self._use_schedule(scheduling.choose(c.schedule, timing, c.single_max_ratio))
        log.info(
            "classifier schedule",
            schedule=self.schedule,
            configured=c.schedule,
            lone_ms=None if timing is None else round(1000 * timing.lone_s, 2),
            packed_ms_per_prompt=None if timing is None else round(1000 * timing.packed_s_per_prompt, 2),
        )

    def _use_schedule(self, chosen: str) -> None:
        """Packed steps shed by full steps; one prompt a step, by one-prompt steps (CoreConfig)."""
        c, single = self.config, chosen == "single"
        self.schedule = chosen
        self.batcher.reshape(
            max_batch_size=1 if single else c.max_batch_size,
            max_queue_delay_steps=0.0 if single else c.max_queue_delay_steps,
            max_queue_delay_jobs=c.single_queue_delay_steps if single else 0.0,
        )
        for name in SCHEDULES:
            if name != "auto":
                metrics.SCHEDULE.labels(schedule=name).set(int(name == chosen))

    def close(self, *, release_cache: bool = True) -> None:
        """Finish queued work, then release the cache (unless a new core shares it)."""
        self.batcher.close()
        if self.cache is not None and release_cache:
            self.cache.close()

    # -- steps ----------------------------------------------------------------

    def _lookup(self, keys: list[str]) -> dict[str, Verdict | None]:
        if self.cache is None:
            metrics.CACHE_MISSES.inc(len(keys))
            return dict.fromkeys(keys)
        values = self.cache.get_many(keys)
        hits = sum(v is not None for v in values)
        metrics.CACHE_HITS.inc(hits)
        metrics.CACHE_MISSES.inc(len(keys) - hits)
        return dict(zip(keys, values, strict=True))

    def _token_ids(self, conv: Conversation) -> list[int]:
        with self._tokenizer_lock:
            return self.host.token_ids(conv)

    def _jobs(self, views: Sequence[_Pending.View], missing: set[str]) -> dict[str, _Job]:
        """Tokenise every miss first, so an invalid request queues nothing."""
        limit = self.config.max_prompt_tokens
        jobs: dict[str, _Job] = {}
        for view in views:
            key = view.key
            if key not in missing or key in jobs:
                continue
            if view.passage is not None:
                ids = list(view.passage.ids)
                jobs[key] = _Job(key, ids, view.passage, cost=len(ids))
                continue
            if view.answer is not None:
                ids = [*view.answer.prefix, *view.answer.answer]
                jobs[key] = _Job(key, ids, answer=view.answer, cost=len(ids))
                continue
            assert view.conv is not None, "a view is a conversation or a passage"
            ids = self._token_ids(view.conv)
            if len(ids) > limit:  # the views are sized to fit; this is a guard, not a path
                raise InvalidInput(f"a view of the prompt is {len(ids)} tokens, over the limit of {limit}")
            span = last_turn_content(ids, self._markers)
            jobs[key] = _Job(key, ids, cost=len(ids) - self._prefix_len(ids), full=view.full, span=span)
        return jobs

    def _prefix_len(self, ids: list[int]) -> int:
        """How many of ``ids`` the shared prefix's cache covers (0: the plain path)."""
        return len(self.prefix) if self.prefix is not None and self.prefix.fits(ids) else 0

    def _compute(
        self, jobs: dict[str, _Job], deadline: float | None, cancelled: threading.Event | None
    ) -> dict[str, Verdict]:
        pending = _Pending()
        flow = self.batcher.new_flow()  # this call's jobs take one turn of the round-robin
        try:
            with self._flights_lock:
                fresh = [job for key, job in jobs.items() if key not in self._flights]
                try:
                    self.batcher.admit(sum(job.cost for job in fresh), deadline, len(fresh))
                except Overloaded:
                    metrics.SHED_CALLS.inc()
                    raise
                for key, job in jobs.items():
                    flight = self._flights.get(key)
                    if flight is not None and not flight.future.cancelled():
                        flight.waiters += 1
                        metrics.SINGLE_FLIGHT_JOINS.inc()
                        if flight.future.done():  # landed, its cache write under way: a hit
                            pending.landed.add(key)
                    else:
                        flight = _Flight(key, self.batcher.submit(job, flow=flow, cost=job.cost), job)
                        self._flights[key] = flight
                        flight.future.add_done_callback(functools.partial(self._land, flight))
                    pending.flights[key] = flight
            metrics.QUEUE_DEPTH.set(self.batcher.queued)
            self._wait([f.future for f in pending.flights.values()], deadline, cancelled)
            out = {key: flight.future.result() for key, flight in pending.flights.items()}
            return {key: as_cached(v) if key in pending.landed else v for key, v in out.items()}
        finally:
            self._release(pending)

    def _wait(
        self, futures: list[Future[Verdict]], deadline: float | None, wake: threading.Event | None
    ) -> None:
        """Block until every future is done, the deadline passes, or ``wake`` is set (client gone).

        The futures' callbacks set ``wake`` too, so one event wakes us for
        either reason, without polling.
        """
        event = wake if wake is not None else threading.Event()
        remaining = [len(futures)]
        count_lock = threading.Lock()

        def one_done(_f: Future[Verdict]) -> None:
            with count_lock:
                remaining[0] -= 1
                if remaining[0] == 0:
                    event.set()

        for fut in futures:
            fut.add_done_callback(one_done)
        timeout = (
            None if deadline is None else min(threading.TIMEOUT_MAX, max(0.0, deadline - time.monotonic()))
        )
        event.wait(timeout)
        if all(f.done() for f in futures):
            return
        if deadline is not None and time.monotonic() >= deadline:
            raise DeadlineExceeded("the deadline passed before the verdict was ready")
        raise DeadlineExceeded("the client went away before the verdict was ready")

    def _release(self, pending: _Pending) -> None:
        """Stop waiting: a flight nobody waits for is cancelled, or dropped at its next chunk if it runs."""
        with self._flights_lock:
            for flight in pending.flights.values():
                flight.waiters -= 1
                if flight.waiters <= 0 and not flight.future.done():
                    if not flight.future.cancel():
                        flight.job.dropped.set()
                    self._forget(flight)

    def _land(self, flight: _Flight, done: Future[Verdict]) -> None:
        """A failed or cancelled flight ends here; a verdict's ends in :meth:`_store`, once cached.

        Until its verdict is in the cache, a request for the same key joins the
        landed flight instead of computing it again (the cache is written after
        the answers go out, so as not to delay them).
        """
        if done.cancelled() or done.exception() is not None:
            with self._flights_lock:
                self._forget(flight)

    def _forget(self, flight: _Flight) -> None:
        if self._flights.get(flight.key) is flight:
            del self._flights[flight.key]

    # -- worker thread ----------------------------------------------------------

    def _probe_states(self, rows: list[list[int]]) -> torch.Tensor:
        """Probe-layer states at each row's last token ``[B, H]``, stopping after that layer."""
        layer = self.bundle.probe_layer
        return self._layer_states(rows, [layer]).states[layer]

    def _layer_states(
        self,
        rows: list[list[int]],
        layers: list[int],
        stop: Callable[[list[int]], StopRule] | None = None,
        spans: list[Span] | None = None,
    ) -> LayerStates:
        """Last-token states of ``layers`` (rows a ``stop`` rule ended early are NaN at deeper ones).

        Rows that start with the template prefix run from its cached keys and
        values; the others (own system prompt, say) take a plain forward pass.
        ``stop(indices)`` makes the early-exit rule for one of those two
        passes. With ``spans``, also the deepest layer's mean over each span.
        """
        prefix, size = self.prefix, self.host.identity.hidden_size
        fits = [prefix is not None and prefix.fits(r) for r in rows]
        out = LayerStates({layer: torch.full((len(rows), size), float("nan")) for layer in layers})
        out.content = None if spans is None else torch.full((len(rows), size), float("nan"))
        for idx in ([i for i, f in enumerate(fits) if f], [i for i, f in enumerate(fits) if not f]):
            if not idx:
                continue
            part, rule = [rows[i] for i in idx], stop(idx) if stop is not None else None
            part_spans = None if spans is None else [spans[i] for i in idx]
            if self._trunk is not None and fits[idx[0]] and len(idx) == 1 and layers == [self._trunk.layer]:
                found = self._trunk.states_at(part[0], None if part_spans is None else part_spans[0])
            elif prefix is not None and fits[idx[0]]:
                found = prefix.states_at(part, layers, stop=rule, spans=part_spans)
            elif part_spans is not None:
                found = states_with_spans(self.host, self.host.pad(part), layers, part_spans, stop=rule)
            else:
                found = LayerStates(last_token_states(self.host, self.host.pad(part), layers, stop=rule))
            for layer, states in found.states.items():
                out.states[layer][idx] = states
            if out.content is not None and found.content is not None:
                out.content[idx] = found.content
        return out

    @property
    def backend(self) -> str:
        """Where a single prompt view's miss runs: an engine of :data:`accelerated.ENGINES` or ``torch``."""
        return "torch" if self._trunk is None else self._trunk.engine

    @property
    def passage_engine(self) -> str:
        """Where a long text's passages are read: ``openvino`` or ``torch``."""
        return "torch" if self._passages is None else self._passages.engine

    def _accelerated(self) -> CompiledTrunk | None:
        """The compiled trunk, for single prompt views after the prefix (``CoreConfig.backend``).

        ``auto`` takes the engine measured fastest on this CPU
        (:func:`accelerated.auto_engine`) where it applies: installed, the
        template prefix shared, no early exit; a named engine
        insists (an error names what is missing); ``torch`` never takes one.
        """
        backend = self.config.backend
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r} ({', '.join(BACKENDS)})")
        fits = self.prefix is not None and self._cascade is None
        engine = accelerated.auto_engine() if backend == "auto" and fits else backend
        if engine in ("torch", "auto", None):
            return None
        if not fits or self.prefix is None:
            raise ValueError(f"--backend {backend} needs the shared template prefix and no early exit")
        try:
            threads = torch.get_num_threads()
            trunk = accelerated.shared_trunk(self.host, self.bundle.probe_layer, threads, engine)
        except Exception as exc:
            if backend != "auto":
                raise
            error = type(exc).__name__
            log.warning("compiled trunk unavailable, misses run in pytorch", engine=engine, error=error)
            return None
        if trunk.prefix_len != len(self.prefix):
            raise ValueError("the compiled trunk's template prefix differs from the classifier's")
        return trunk

    def _compiled_passages(self) -> CompiledPassages | None:
        """A long text's windows compiled by OpenVINO beside a compiled trunk of either engine, in
        the served precision (:class:`~classifier_service.accelerated.CompiledPassages`): a
        512-token window took 0.13 s against PyTorch bfloat16's 0.17 s, and 0.20 s against
        PyTorch float32's 0.25 s; ONNX Runtime float32 read one only 1.1x faster than PyTorch."""
        info = self.bundle.passage
        if info is None or self._trunk is None or not self.config.compiled_passages:
            return None
        if not accelerated.available("openvino"):
            log.info("compiled passages need openvino, they run in pytorch")
            return None
        try:
            return accelerated.shared_passages(self.host, info.layers, torch.get_num_threads())
        except Exception as exc:
            if self.config.backend == "openvino":
                raise
            log.warning("compiled passages unavailable, they run in pytorch", error=type(exc).__name__)
            return None

    def _view_verdicts(self, jobs: list[_Job]) -> list[Verdict]:
        """Prompt views' verdicts; with a cascade, confident ones leave at its layer (early exit).

        A pass stops at the cascade's layer when every row in it may leave
        there; otherwise it runs on to the probe layer, and the rows that
        could have left still take the early verdict, so a verdict never
        depends on the other prompts of its batch. With a content category
        head, the probe layer's mean over each last user turn comes along.
        """
        rows = [job.token_ids for job in jobs]
        spans = [job.span for job in jobs] if self.bundle.reads_content else None
        cascade, probe = self._cascade, self.bundle.probe_layer
        if cascade is None or all(job.full for job in jobs):
            found = self._layer_states(rows, [probe], spans=spans)
            return verdicts_from_states(self.bundle, found.states[probe], content=found.content)
        exits = torch.zeros(len(jobs), dtype=torch.bool)
        early = torch.ones(len(jobs))
        allowed = torch.tensor([not job.full for job in jobs])

        def stop(idx: list[int]) -> StopRule:
            def rule(layer: int, states: torch.Tensor) -> bool:
                early[idx] = self.bundle.early_score(states)
                exits[idx] = allowed[idx] & self.bundle.exits_early(early[idx])
                return bool(exits[idx].all())

            return rule

        found = self._layer_states(rows, [cascade.layer, probe], stop, spans)
        content = None if found.content is None else torch.nan_to_num(found.content)
        out = verdicts_from_states(self.bundle, torch.nan_to_num(found.states[probe]), content=content)
        for i in torch.nonzero(exits).flatten().tolist():
            out[i] = Verdict.cascade_exit_of(float(early[i]), self.bundle)
        metrics.CASCADE_EXITS.inc(int(exits.sum()))
        return out

    def _run_batch(self, jobs: list[_Job]) -> list[Verdict | BaseException]:
        with self._model_lock:
            return self._run_locked(jobs)

    def _run_locked(self, jobs: list[_Job]) -> list[Verdict | BaseException]:
        started = time.perf_counter()
        step = self.config.max_step_tokens
        kinds: dict[str, list[int]] = {"view": [], "long": [], "passage": [], "answer": []}
        for i, job in enumerate(jobs):
            kind = "passage" if job.passage is not None else "answer" if job.answer is not None else "view"
            kinds["long" if kind == "view" and 0 < step < job.cost else kind].append(i)
        verdicts: list[Verdict | BaseException | None] = [None] * len(jobs)
        if kinds["view"]:
            for i, v in zip(
                kinds["view"], self._view_verdicts([jobs[i] for i in kinds["view"]]), strict=True
            ):
                verdicts[i] = v
        for i in kinds["long"]:
            verdicts[i] = self._long_view(jobs[i])
        for rows, judge in (
            (kinds["passage"], self._passage_verdicts),
            (kinds["answer"], self._answer_verdicts),
        ):
            if rows:
                for i, v in zip(rows, judge([jobs[i] for i in rows]), strict=True):
                    verdicts[i] = v
        self.forward_passes += 1
        metrics.FORWARD_SECONDS.observe(time.perf_counter() - started)
        metrics.BATCH_SIZE.observe(len(jobs))
        metrics.QUEUE_DEPTH.set(self.batcher.queued)
        return [v for v in verdicts if v is not None]

    def _long_view(self, job: _Job) -> Verdict | BaseException:
        """A view longer than one step, run in chunks (:mod:`classifier_service.chunked`).

        Between chunks the model lock is let go and the batcher runs other
        callers' short jobs; the view stops there once nobody waits for it.
        """

        def between() -> bool:
            self._model_lock.release()
            try:
                self.batcher.between()
            finally:
                self._model_lock.acquire()
            return not job.dropped.is_set()

        n = self._prefix_len(job.token_ids)
        cache = self.prefix.cache() if n and self.prefix is not None else DynamicCache()
        found = chunked_last_state(
            self.host,
            self.bundle.probe_layer,
            job.token_ids[n:],
            cache=cache,
            start=n,
            chunk=self.config.max_step_tokens,
            between=between,
            span=job.span if self.bundle.reads_content else None,
        )
        if found is None:
            metrics.DROPPED_JOBS.inc()
            return DeadlineExceeded("dropped between chunks: nobody waits for this verdict any more")
        state, content = found
        (verdict,) = verdicts_from_states(
            self.bundle, state[None], content=None if content is None else content[None]
        )
        return verdict

    def _passage_verdicts(self, jobs: list[_Job]) -> list[Verdict]:
        """Each passage's verdict: its highest segment-end score under the passage probe, or the
        score of a candidate read again by the request probe and the passage gate.

        No category: the category head reads the probe layer's last-token state,
        which a passage does not have (an unsafe passage takes the policy's default).
        """
        assert self.bundle.passage is not None, "passages are planned only for a bundle with a passage probe"
        rows = [j.passage for j in jobs if j.passage is not None]
        hidden_of = None if self._passages is None else self._passages.hidden
        scores = passage_scores(self.host, self.bundle, rows, self._probe_states, hidden_of)
        cut, bid = self.bundle.threshold, self.bundle.bundle_id
        return [Verdict(s, s >= cut, "", {}, cut, bid) for s in scores]

    def _answer_verdicts(self, jobs: list[_Job]) -> list[Verdict]:
        """Each answer window's verdict: its highest segment-end score under the response probe.

        No category, as for passages: the category head reads a request's state.
        """
        reads = [j.answer for j in jobs if j.answer is not None]
        scores = [max(s) for s in position_scores(self.host, self.bundle, reads, batch_size=len(reads))]
        cut, bid = self.bundle.threshold, self.bundle.bundle_id
        return [Verdict(s, s >= cut, "", {}, cut, bid) for s in scores]

    def _store(self, jobs: list[_Job], verdicts: Sequence[Verdict | BaseException]) -> None:
        """Cache the batch's verdicts, then end their flights (see :meth:`_land`)."""
        try:
            if self.cache is not None:
                done = {job.key: v for job, v in zip(jobs, verdicts, strict=True) if isinstance(v, Verdict)}
                self.cache.set_many(done)
        finally:
            with self._flights_lock:
                for job in jobs:
                    flight = self._flights.get(job.key)
                    if flight is not None and flight.job is job:
                        del self._flights[job.key]

    # -- logs -----------------------------------------------------------------

    def _log(self, convs: Sequence[Conversation], verdicts: list[Verdict], views: list[int]) -> None:
        """Digests only; raw text only with ``--log-prompts``."""
        for conv, v, n in zip(convs, verdicts, views, strict=True):
            extra = {"prompt": conv.last_user_text} if self.config.log_prompts else {}
            log.debug(
                "classified",
                digest=conv.digest()[:16],
                views=n,
                unsafe=v.unsafe,
                category=v.category,
                score=round(v.score, 4),
                cached=v.cached,
                **extra,
            )

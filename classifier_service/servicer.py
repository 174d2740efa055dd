"""``steerguard.v1.Classifier``: decode, call the core, encode.

Servicers stay thin and never abort: they raise :mod:`steerguard.errors`
exceptions, which the shared error interceptor maps to status codes (client
mistakes to ``INVALID_ARGUMENT`` with a reason, anything unexpected to a bare
``INTERNAL``). The core is attached once the model and bundle are loaded;
until then RPCs answer ``UNAVAILABLE``.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any

import grpc

from classifier_service import metrics
from classifier_service.core import ClassifierCore
from classifier_service.slot import CoreSlot
from classifier_service.wire import BadRequest
from steerguard.errors import InvalidInput, SteerguardError
from steerguard.grpc_common.describe import bundle_info
from steerguard.grpc_common.status import status_for
from steerguard.model.chat import Conversation, check_text, normalise_request
from steerguard.v1 import classifier_pb2, common_pb2
from steerguard.verdict import Verdict

# time_remaining() above this means "no deadline" (grpc reports ~infinity).
_NO_DEADLINE = 365 * 24 * 3600.0


def to_conversation(request: classifier_pb2.ClassifyRequest, where: str = "") -> Conversation:
    """A ``ClassifyRequest`` as a validated conversation; reasons prefixed with ``where``."""
    has_messages = len(request.messages) > 0
    try:
        if not request.prompt and not has_messages:
            raise InvalidInput("prompt is empty: give a non-empty prompt or messages")
        messages = (
            [{"role": m.role, "content": m.content} for m in request.messages] if has_messages else None
        )
        return normalise_request(prompt=request.prompt or None, messages=messages)
    except InvalidInput as exc:
        raise InvalidInput(where + exc.reason) from None


def answer_of(request: classifier_pb2.ClassifyRequest, where: str = "") -> str | None:
    """The answer to judge, or None when the request judges its conversation (``answer`` unset)."""
    if not request.answer:
        return None
    try:
        return check_text(request.answer, "answer")
    except InvalidInput as exc:
        raise InvalidInput(where + exc.reason) from None


def threshold_of(request: Any, where: str = "", field: str = "threshold") -> float | None:
    if not request.HasField(field):
        return None
    value = float(getattr(request, field))
    if not math.isfinite(value) or not 0.0 < value < 1.0:
        raise InvalidInput(f"{where}{field} must be in (0, 1), got {value}")
    return value


def floor_of(request: classifier_pb2.ClassifyRequest, where: str = "") -> float | None:
    """The lowest cut the caller may apply: ``lowest_threshold`` or ``threshold``, whichever is lower."""
    cuts = [
        c
        for c in (threshold_of(request, where), threshold_of(request, where, "lowest_threshold"))
        if c is not None
    ]
    return min(cuts) if cuts else None


def to_proto(verdict: Verdict) -> common_pb2.Verdict:
    return verdict.to_proto()


def _check_decoded(request: Any) -> None:
    if isinstance(request, BadRequest):
        raise InvalidInput(request.reason)


def chunk_text(chunk: classifier_pb2.AnswerChunk, first: bool) -> str:
    """A stream chunk's answer text; only the first chunk may carry the conversation."""
    if not first and (chunk.prompt or len(chunk.messages) or chunk.HasField("threshold")):
        raise InvalidInput("only a stream's first chunk carries prompt, messages or threshold")
    return check_text(chunk.text, "text") if chunk.text else ""


class ClassifierServicer:
    """Implements ``Classify``, ``ClassifyBatch`` and ``ClassifyStream`` over a :class:`ClassifierCore`."""

    def __init__(self, core: ClassifierCore | None = None, *, max_batch_requests: int = 64) -> None:
        self.slot = CoreSlot(core)
        self.max_batch_requests = max_batch_requests

    @property
    def core(self) -> ClassifierCore | None:
        return self.slot.current

    def attach(self, core: ClassifierCore) -> ClassifierCore | None:
        """Answer with ``core`` (once the model and bundle are loaded, and at each bundle reload).

        Returns the core it replaces, which closes when the calls still using it end.
        """
        return self.slot.replace(core)

    @staticmethod
    def _call_limits(context: grpc.ServicerContext) -> tuple[float | None, threading.Event]:
        """The absolute deadline and an event set when the RPC ends (client gone)."""
        remaining = context.time_remaining()  # a huge number when the client set no deadline
        deadline = (
            time.monotonic() + remaining if remaining is not None and remaining < _NO_DEADLINE else None
        )
        gone = threading.Event()
        context.add_callback(gone.set)
        return deadline, gone

    @contextlib.contextmanager
    def _observe(self, method: str) -> Iterator[None]:
        started = time.perf_counter()
        code = grpc.StatusCode.OK
        try:
            yield
        except SteerguardError as exc:
            code = status_for(exc)
            raise
        except Exception:
            code = grpc.StatusCode.INTERNAL
            raise
        finally:
            metrics.REQUEST_SECONDS.labels(method=method, code=code.name).observe(
                time.perf_counter() - started
            )

    def Classify(self, request: Any, context: grpc.ServicerContext) -> common_pb2.Verdict:
        with self._observe("Classify"):
            _check_decoded(request)
            conv = to_conversation(request)
            answer = answer_of(request)
            cut, floor = threshold_of(request), floor_of(request)
            deadline, gone = self._call_limits(context)
            with self.slot.lease() as core:
                (verdict,) = core.classify(
                    [conv],
                    answers=[answer],
                    thresholds=[cut],
                    floors=[floor],
                    deadline=deadline,
                    cancelled=gone,
                )
            return to_proto(verdict)

    def ClassifyBatch(
        self, request: Any, context: grpc.ServicerContext
    ) -> classifier_pb2.ClassifyBatchResponse:
        with self._observe("ClassifyBatch"):
            _check_decoded(request)
            n = len(request.requests)
            if n == 0:
                raise InvalidInput("requests is empty: give at least one request")
            if n > self.max_batch_requests:
                raise InvalidInput(f"batch has {n} requests, over the limit of {self.max_batch_requests}")
            convs = [to_conversation(r, f"requests[{i}]: ") for i, r in enumerate(request.requests)]
            answers = [answer_of(r, f"requests[{i}]: ") for i, r in enumerate(request.requests)]
            cuts = [threshold_of(r, f"requests[{i}]: ") for i, r in enumerate(request.requests)]
            floors = [floor_of(r, f"requests[{i}]: ") for i, r in enumerate(request.requests)]
            deadline, gone = self._call_limits(context)
            with self.slot.lease() as core:
                verdicts = core.classify(
                    convs,
                    answers=answers,
                    thresholds=cuts,
                    floors=floors,
                    deadline=deadline,
                    cancelled=gone,
                    label_rows=True,
                )
            return classifier_pb2.ClassifyBatchResponse(verdicts=[to_proto(v) for v in verdicts])

    def DescribeBundle(self, request: Any, context: grpc.ServicerContext) -> common_pb2.BundleInfo:
        """The bundle served (the sidecar checks the steer service serves the same one)."""
        with self.slot.lease() as core:
            return bundle_info(core.bundle)

    def ClassifyStream(
        self, chunks: Iterable[Any], context: grpc.ServicerContext
    ) -> Iterator[common_pb2.Verdict]:
        """One verdict per chunk, on the answer so far; the stream's memory goes when the call ends.

        The call ends when the client closes its side, cancels, or its deadline
        passes (gRPC then stops reading and sending, which closes this generator).
        """
        with self._observe("ClassifyStream"):
            chunk_iter = iter(chunks)
            first = next(chunk_iter, None)
            if first is None:
                return
            _check_decoded(first)
            conv = to_conversation(first)
            cut = threshold_of(first)
            text = chunk_text(first, first=True)
            with self.slot.lease() as core, core.answer_stream(conv, cut) as judge:
                yield to_proto(judge(text))
                for chunk in chunk_iter:
                    _check_decoded(chunk)
                    yield to_proto(judge(chunk_text(chunk, first=False)))

"""The request flow: read, classify, decide, then forward, block, steer or flag.

One :class:`Proxy` serves every route. Chat routes (OpenAI or a policy's JSON
routes) are classified; any other path is relayed untouched. Every outcome —
including each failure — ends in a response and one log event; nothing is
dropped silently.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from sidecar.adapters.base import Adapter, ReplyMeta
from sidecar.compat import deadline
from sidecar.conversation import ChatRequest, Message, answer_conversation, context_for_classifier
from sidecar.decisions import Decision, decide
from sidecar.grpc_clients import ClassifierClient, ServiceFailure, SteerClient, to_proto_messages
from sidecar.http_errors import (
    ClassifierUnavailable,
    NotFound,
    RequestTimeout,
    UnsupportedMediaType,
    error_response,
    status_of,
)
from sidecar.metrics import Metrics
from sidecar.policy import Action, FailureMode, Policy, Route
from sidecar.response_check import decode_body, guard_event_stream
from sidecar.settings import SidecarSettings
from sidecar.upstream import Upstream, raw_header_items, request_headers, response_headers, stream_back
from sidecar.verdict_cache import VerdictCache, cache_key
from steerguard.errors import InvalidInput, PayloadTooLarge, SteerguardError, UpstreamError
from steerguard.logs import get_logger
from steerguard.v1 import common_pb2, steer_pb2

H_VERDICT = "x-steerguard-verdict"
H_ACTION = "x-steerguard-action"
H_CATEGORY = "x-steerguard-category"
H_SCORE = "x-steerguard-score"
H_REQUEST_ID = "x-steerguard-request-id"
H_FAILURE = "x-steerguard-failure"
H_RESPONSE = "x-steerguard-response-verdict"

_FINISH = {"stop": "stop", "length": "length", "cancelled": "stop", "": "stop"}


@dataclass
class Trace:
    """What one request did; logged once at the end (never any text of the conversation)."""

    request_id: str
    route: str
    start: float = field(default_factory=time.perf_counter)
    fields: dict[str, Any] = field(default_factory=dict)

    def elapsed_ms(self) -> float:
        return (time.perf_counter() - self.start) * 1000.0


def _is_json(content_type: str) -> bool:
    mime = content_type.split(";", 1)[0].strip().lower()
    return mime == "application/json" or mime.endswith("+json")


def _verdict_headers(verdict: common_pb2.Verdict | None, action: str, request_id: str) -> dict[str, str]:
    if verdict is None:
        headers = {H_VERDICT: "unknown"}
    else:
        headers = {H_VERDICT: "unsafe" if verdict.unsafe else "safe", H_SCORE: f"{verdict.score:.4f}"}
        if verdict.unsafe and verdict.category:
            headers[H_CATEGORY] = verdict.category
    headers[H_ACTION] = action
    headers[H_REQUEST_ID] = request_id
    return headers


class Proxy:
    """Handlers for chat routes and pass-through."""

    def __init__(
        self,
        settings: SidecarSettings,
        policy: Policy,
        classifier: ClassifierClient,
        steer: SteerClient,
        upstream: Upstream,
        metrics: Metrics,
    ) -> None:
        self.settings = settings
        self.policy = policy
        self.classifier = classifier
        self.steer = steer
        self.upstream = upstream
        self.metrics = metrics
        self.verdicts = VerdictCache(settings.verdict_cache_size, settings.verdict_cache_ttl_s)
        self.log = get_logger("steerguard.sidecar")

    # ----------------------------------------------------------------- helpers

    def _finish(self, trace: Trace, response: web.StreamResponse, **fields: Any) -> web.StreamResponse:
        trace.fields.update(fields)
        self.metrics.requests.labels(trace.route, str(response.status)).inc()
        level = "warning" if response.status >= 500 or trace.fields.get("failure") else "info"
        getattr(self.log, level)(
            "request",
            request_id=trace.request_id,
            route=trace.route,
            status=response.status,
            total_ms=round(trace.elapsed_ms(), 3),
            **trace.fields,
        )
        return response

    def _error(
        self, trace: Trace, error: SteerguardError, headers: dict[str, str] | None = None
    ) -> web.Response:
        status, code = status_of(error)
        if status < 500:
            self.metrics.bad_requests.labels(str(status)).inc()
        response = error_response(error, {H_REQUEST_ID: trace.request_id, **(headers or {})})
        self._finish(trace, response, error=code)
        return response

    def _failure(self, trace: Trace, dependency: str, kind: str) -> None:
        self.metrics.failures.labels(dependency, kind).inc()
        trace.fields["failure"] = f"{dependency}:{kind}"

    async def _read_body(self, request: web.Request) -> bytes:
        """The request body, refusing wrong types, oversized and slow bodies before parsing."""
        if not _is_json(request.headers.get("Content-Type", "")):
            raise UnsupportedMediaType("content type must be application/json")
        limit = self.settings.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            raise PayloadTooLarge(f"request body is larger than {limit} bytes")
        body = bytearray()
        try:
            async with deadline(self.settings.client_timeout_s):
                while True:
                    chunk = await request.content.readany()
                    if not chunk:
                        break
                    body += chunk
                    if len(body) > limit:
                        raise PayloadTooLarge(f"request body is larger than {limit} bytes")
        except asyncio.TimeoutError:
            raise RequestTimeout("request body was not received in time") from None
        return bytes(body)

    async def _classify(
        self, trace: Trace, stage: str, messages: list[Message]
    ) -> common_pb2.Verdict | ServiceFailure:
        """A verdict, or the failure (InvalidInput is raised: the client's request is at fault)."""
        started = time.perf_counter()
        key = cache_key(messages, self.policy.threshold) if self.verdicts.enabled else b""
        kept = self.verdicts.get(key) if key else None
        if kept is not None:
            trace.fields[f"{stage}_local_cache"] = True
            self.metrics.local_cache_hits.labels(stage).inc()
            self._count_verdict(stage, kept)
            return kept
        try:
            verdict = await self.classifier.classify(
                messages, timeout=self.settings.classify_timeout_s, threshold=self.policy.threshold
            )
        except ServiceFailure as failure:
            self._failure(trace, "classifier", failure.kind)
            self.metrics.verdicts.labels(stage, "unknown", "").inc()
            return failure
        finally:
            elapsed = time.perf_counter() - started
            self.metrics.classify_latency.labels(stage).observe(elapsed)
            trace.fields[f"{stage}_classify_ms"] = round(elapsed * 1000.0, 3)
        if key:
            self.verdicts.put(key, verdict)
        self._count_verdict(stage, verdict)
        return verdict

    def _count_verdict(self, stage: str, verdict: common_pb2.Verdict) -> None:
        label = "unsafe" if verdict.unsafe else "safe"
        self.metrics.verdicts.labels(stage, label, verdict.category if verdict.unsafe else "").inc()

    # ----------------------------------------------------------- pass-through

    async def passthrough(self, request: web.Request) -> web.StreamResponse:
        """Any path without an adapter: relayed untouched (or refused when the policy says so)."""
        trace = Trace(request.headers.get("x-request-id") or uuid.uuid4().hex, "passthrough")
        if self.policy.unknown_paths == "reject":
            return self._error(trace, NotFound("no such route"))
        body = request.content if request.body_exists else None
        try:
            upstream = await self.upstream.send(
                request.method, request.raw_path, request_headers(raw_header_items(request)), body
            )
        except UpstreamError as exc:
            self._failure(trace, "upstream", status_of(exc)[1])
            return self._error(trace, exc)
        response, failed = await stream_back(request, upstream, {})
        if failed:
            self._failure(trace, failed, "mid_response")
        return self._finish(trace, response, upstream_status=upstream.status)

    # -------------------------------------------------------------- chat flow

    async def chat(self, request: web.Request, route: Route, adapter: Adapter) -> web.StreamResponse:
        """Classify the latest user message in context, then act per policy."""
        trace = Trace(request.headers.get("x-request-id") or uuid.uuid4().hex, route.path)
        try:
            body = await self._read_body(request)
            chat = adapter.parse(body)
        except SteerguardError as exc:
            return self._error(trace, exc)
        context = context_for_classifier(
            chat.messages, max_messages=self.policy.context_messages, max_chars=self.policy.context_chars
        )
        trace.fields.update(prompt_chars=chat.prompt_chars, context_turns=len(context), stream=chat.stream)
        try:
            verdict = await self._classify(trace, "request", context)
        except InvalidInput as exc:
            # The classifier refused the input (e.g. over its token limit): it cannot be judged.
            self._failure(trace, "classifier", "invalid")
            if route.on_classifier_error is FailureMode.CLOSED:
                return self._error(trace, exc, {H_VERDICT: "unknown", H_ACTION: "fail-closed"})
            marks = _verdict_headers(None, "fail-open", trace.request_id)
            marks[H_FAILURE] = "classifier-invalid"
            return await self._forward(request, trace, route, adapter, chat, body, context, marks)

        if isinstance(verdict, ServiceFailure):
            if route.on_classifier_error is FailureMode.CLOSED:
                self.metrics.actions.labels("fail_closed", "false").inc()
                return self._error(
                    trace,
                    ClassifierUnavailable(f"request could not be checked: {verdict.reason}"),
                    {H_VERDICT: "unknown", H_ACTION: "fail-closed"},
                )
            self.metrics.actions.labels("fail_open", "false").inc()
            marks = _verdict_headers(None, "fail-open", trace.request_id)
            marks[H_FAILURE] = f"classifier-{verdict.kind}"
            return await self._forward(request, trace, route, adapter, chat, body, context, marks)

        decision = decide(self.policy, verdict.unsafe, verdict.category)
        self.metrics.actions.labels(decision.intended.value, str(decision.shadow).lower()).inc()
        trace.fields.update(
            verdict="unsafe" if verdict.unsafe else "safe",
            score=round(verdict.score, 4),
            category=verdict.category if verdict.unsafe else "",
            cached=verdict.cached,
            action=decision.intended.value,
            shadow=decision.shadow,
        )
        if decision.shadow:
            marks = _verdict_headers(verdict, "shadow", trace.request_id)
            return await self._forward(request, trace, route, adapter, chat, body, context, marks)
        if decision.action is Action.BLOCK:
            return await self._block(request, trace, adapter, chat, verdict, decision)
        if decision.action is Action.STEER:
            return await self._steer(request, trace, adapter, chat, context, verdict, decision)
        marks = _verdict_headers(verdict, decision.action.value, trace.request_id)
        return await self._forward(request, trace, route, adapter, chat, body, context, marks)

    # ---------------------------------------------------------------- forward

    async def _forward(
        self,
        request: web.Request,
        trace: Trace,
        route: Route,
        adapter: Adapter,
        chat: ChatRequest,
        body: bytes,
        context: list[Message],
        marks: dict[str, str],
    ) -> web.StreamResponse:
        """Send the original request unchanged; relay (or check) the answer."""
        added = time.perf_counter() - trace.start
        self.metrics.added_latency.labels(trace.route).observe(added)
        trace.fields["added_ms"] = round(added * 1000.0, 3)
        try:
            upstream = await self.upstream.send(
                request.method, request.raw_path, request_headers(raw_header_items(request)), body
            )
        except UpstreamError as exc:
            self._failure(trace, "upstream", status_of(exc)[1])
            return self._error(trace, exc, marks)
        trace.fields["upstream_status"] = upstream.status
        self.metrics.request_duration.labels(trace.route, marks[H_ACTION]).observe(
            time.perf_counter() - trace.start
        )
        check = route.response_check
        if check.enabled and 200 <= upstream.status < 300:
            content_type = upstream.headers.get("Content-Type", "")
            if content_type.startswith("text/event-stream"):
                return await self._check_stream(
                    request, trace, route, adapter, chat, context, marks, upstream
                )
            if _is_json(content_type):
                return await self._check_body(request, trace, route, adapter, context, marks, upstream)
        response, failed = await stream_back(request, upstream, marks)
        if failed:
            self._failure(trace, failed, "mid_response")
        return self._finish(trace, response)

    # ------------------------------------------------------- sidecar replies

    def _meta(self, verdict: common_pb2.Verdict, action: str) -> ReplyMeta:
        return ReplyMeta(
            verdict="unsafe" if verdict.unsafe else "safe",
            unsafe=verdict.unsafe,
            category=verdict.category,
            score=verdict.score,
            action=action,
        )

    async def _block(
        self,
        request: web.Request,
        trace: Trace,
        adapter: Adapter,
        chat: ChatRequest,
        verdict: common_pb2.Verdict,
        decision: Decision,
        *,
        fallback: str | None = None,
    ) -> web.StreamResponse:
        """A refusal in the upstream's shape, status 200; the upstream is never called."""
        text = (
            decision.rule.message if decision.rule and decision.rule.message else self.policy.refusal_message
        )
        marks = _verdict_headers(verdict, "block", trace.request_id)
        if fallback:
            marks[H_FAILURE] = fallback
        if chat.stream:
            fmt = adapter.stream_formatter(chat)
            body = fmt.start() + fmt.delta(text) + fmt.finish("stop", 0, 0)
            response = web.Response(
                status=200,
                body=body,
                headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"},
            )
        else:
            reply = adapter.reply(chat, text, self._meta(verdict, "block"))
            response = web.Response(
                status=reply.status, body=reply.body, headers={"Content-Type": reply.content_type}
            )
        response.headers.update(marks)
        self.metrics.request_duration.labels(trace.route, "block").observe(time.perf_counter() - trace.start)
        return self._finish(trace, response)

    def _generate_request(
        self, chat: ChatRequest, context: list[Message], verdict: common_pb2.Verdict, decision: Decision
    ) -> steer_pb2.GenerateRequest:
        params = self.policy.steer
        max_new = (
            params.max_new_tokens if chat.max_tokens is None else min(chat.max_tokens, params.max_new_tokens)
        )
        rule = decision.rule
        if rule is not None and rule.vector == "category" and verdict.category:
            steering = steer_pb2.Steering(
                mode=steer_pb2.Steering.CATEGORY, category=verdict.category, strength=rule.strength
            )
        else:
            steering = steer_pb2.Steering(
                mode=steer_pb2.Steering.REFUSAL, strength=rule.strength if rule else 0.0
            )
        return steer_pb2.GenerateRequest(
            messages=to_proto_messages(context),
            max_new_tokens=max(1, max_new),
            temperature=params.temperature if chat.temperature is None else chat.temperature,
            top_p=params.top_p if chat.top_p is None else chat.top_p,
            seed=chat.seed or 0,
            steering=steering,
        )

    async def _steer(
        self,
        request: web.Request,
        trace: Trace,
        adapter: Adapter,
        chat: ChatRequest,
        context: list[Message],
        verdict: common_pb2.Verdict,
        decision: Decision,
    ) -> web.StreamResponse:
        """An answer from ``Steerer.Generate``; falls back to the refusal if the service fails first."""
        chunks = self.steer.generate(
            self._generate_request(chat, context, verdict, decision), timeout=self.settings.steer_timeout_s
        )
        try:
            first: steer_pb2.GenerateChunk | None = await chunks.__anext__()
        except StopAsyncIteration:
            first = None
        except (ServiceFailure, InvalidInput) as exc:
            kind = exc.kind if isinstance(exc, ServiceFailure) else "invalid"
            self._failure(trace, "steer", kind)
            return await self._block(
                request, trace, adapter, chat, verdict, decision, fallback=f"steer-{kind}"
            )
        marks = _verdict_headers(verdict, "steer", trace.request_id)
        if chat.stream:
            return await self._steer_stream(request, trace, adapter, chat, marks, first, chunks)
        parts = [first.text] if first else []
        last = first
        try:
            async for chunk in chunks:
                parts.append(chunk.text)
                last = chunk
        except (ServiceFailure, InvalidInput) as exc:
            kind = exc.kind if isinstance(exc, ServiceFailure) else "invalid"
            self._failure(trace, "steer", kind)
            return await self._block(
                request, trace, adapter, chat, verdict, decision, fallback=f"steer-{kind}"
            )
        reply = adapter.reply(
            chat,
            "".join(parts),
            self._meta(verdict, "steer"),
            finish_reason=_FINISH.get(last.finish_reason if last else "", "stop"),
            prompt_tokens=last.prompt_tokens if last else 0,
            completion_tokens=last.completion_tokens if last else 0,
        )
        response = web.Response(
            status=reply.status, body=reply.body, headers={"Content-Type": reply.content_type}
        )
        response.headers.update(marks)
        self.metrics.request_duration.labels(trace.route, "steer").observe(time.perf_counter() - trace.start)
        return self._finish(trace, response)

    async def _steer_stream(
        self,
        request: web.Request,
        trace: Trace,
        adapter: Adapter,
        chat: ChatRequest,
        marks: dict[str, str],
        first: steer_pb2.GenerateChunk | None,
        chunks: AsyncIterator[steer_pb2.GenerateChunk],
    ) -> web.StreamResponse:
        fmt = adapter.stream_formatter(chat)
        response = web.StreamResponse(
            status=200, headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", **marks}
        )
        self.metrics.request_duration.labels(trace.route, "steer").observe(time.perf_counter() - trace.start)
        last = first
        try:
            await response.prepare(request)
            await response.write(fmt.start())
            if first is not None and first.text:
                await response.write(fmt.delta(first.text))
            try:
                async for chunk in chunks:
                    if chunk.text:
                        await response.write(fmt.delta(chunk.text))
                    last = chunk
            except (ServiceFailure, InvalidInput) as exc:
                self._failure(trace, "steer", exc.kind if isinstance(exc, ServiceFailure) else "invalid")
                await response.write(fmt.error("the answer was interrupted"))
            else:
                await response.write(
                    fmt.finish(
                        _FINISH.get(last.finish_reason if last else "", "stop"),
                        last.prompt_tokens if last else 0,
                        last.completion_tokens if last else 0,
                    )
                )
            await response.write_eof()
        except ConnectionResetError:
            self._failure(trace, "client", "mid_response")
        finally:
            await chunks.aclose()  # type: ignore[attr-defined]
        return self._finish(trace, response)

    # --------------------------------------------------------- response check

    def _response_text(self, route: Route) -> str:
        return route.response_check.message or self.policy.refusal_message

    async def _judge_answer(self, trace: Trace, context: list[Message], answer: str) -> bool | None:
        """True safe, False unsafe, None when the classifier could not judge."""
        try:
            verdict = await self._classify(trace, "response", answer_conversation(context, answer))
        except InvalidInput:
            return None
        if isinstance(verdict, ServiceFailure):
            return None
        return not verdict.unsafe

    async def _check_body(
        self,
        request: web.Request,
        trace: Trace,
        route: Route,
        adapter: Adapter,
        context: list[Message],
        marks: dict[str, str],
        upstream: aiohttp.ClientResponse,
    ) -> web.StreamResponse:
        """Read a JSON answer (bounded), judge it, replace it when unsafe."""
        limit = route.response_check.max_body_bytes
        fail_closed = route.on_classifier_error is FailureMode.CLOSED
        raw = bytearray()
        try:
            while len(raw) <= limit:
                chunk = await upstream.content.readany()
                if not chunk:
                    break
                raw += chunk
        except (aiohttp.ClientError, asyncio.TimeoutError):
            upstream.close()
            self._failure(trace, "upstream", "mid_response")
            return self._error(trace, UpstreamError("chatbot failed mid-response"), marks)
        if len(raw) > limit:
            upstream.close()
            safe: bool | None = None
            document: Any = None
        else:
            upstream.release()
            decoded = decode_body(bytes(raw), upstream.headers.get("Content-Encoding"))
            try:
                document = json.loads(decoded) if decoded is not None else None
            except (UnicodeDecodeError, ValueError):
                document = None
            answer = adapter.answer_text(document) if document is not None else None
            if answer is None and decoded is not None and document is not None:
                # An answer-less body (an error object, say) has nothing to judge.
                return self._relay_bytes(trace, upstream, bytes(raw), {**marks, H_RESPONSE: "unchecked"})
            safe = await self._judge_answer(trace, context, answer) if answer is not None else None
        if safe is True:
            return self._relay_bytes(trace, upstream, bytes(raw), {**marks, H_RESPONSE: "safe"})
        if safe is None:
            if fail_closed or len(raw) > limit:
                return self._error(
                    trace,
                    ClassifierUnavailable("the answer could not be checked"),
                    {**marks, H_RESPONSE: "unknown"},
                )
            return self._relay_bytes(trace, upstream, bytes(raw), {**marks, H_RESPONSE: "unknown"})
        self.metrics.actions.labels("replace_response", "false").inc()
        trace.fields["response_action"] = "replace"
        body = adapter.replace_answer(document, self._response_text(route))
        headers = response_headers(upstream.headers.items(), keep_length=False)
        headers.popall("Content-Encoding", None)
        response = web.Response(status=upstream.status, body=body, headers=headers)
        response.headers.update({**marks, H_RESPONSE: "unsafe"})
        return self._finish(trace, response)

    def _relay_bytes(
        self, trace: Trace, upstream: aiohttp.ClientResponse, body: bytes, marks: dict[str, str]
    ) -> web.StreamResponse:
        headers = response_headers(upstream.headers.items(), keep_length=False)
        response = web.Response(status=upstream.status, reason=upstream.reason, body=body, headers=headers)
        response.headers.update(marks)
        return self._finish(trace, response)

    async def _check_stream(
        self,
        request: web.Request,
        trace: Trace,
        route: Route,
        adapter: Adapter,
        chat: ChatRequest,
        context: list[Message],
        marks: dict[str, str],
        upstream: aiohttp.ClientResponse,
    ) -> web.StreamResponse:
        """Relay an SSE answer holding back one window of text while it is judged."""
        check = route.response_check
        fail_closed = route.on_classifier_error is FailureMode.CLOSED
        if upstream.headers.get("Content-Encoding", "identity").lower() != "identity":
            if fail_closed:
                upstream.close()
                return self._error(trace, ClassifierUnavailable("the answer could not be checked"), marks)
            relayed, relay_failed = await stream_back(request, upstream, {**marks, H_RESPONSE: "unchecked"})
            if relay_failed:
                self._failure(trace, relay_failed, "mid_response")
            return self._finish(trace, relayed)
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
        response.headers.extend(response_headers(upstream.headers.items(), keep_length=False))
        response.headers.update({**marks, H_RESPONSE: "streaming"})
        refusal = self._response_text(route)

        def replacement(completion_id: str | None, model: str | None) -> bytes:
            fmt = adapter.stream_formatter(chat, completion_id, model)
            return bytes(fmt.delta(refusal) + fmt.finish("content_filter", 0, 0))

        def error_event() -> bytes:
            return bytes(adapter.stream_formatter(chat).error("the answer could not be checked"))

        async def judge(answer: str) -> bool | None:
            return await self._judge_answer(trace, context, answer)

        async def chunks() -> AsyncIterator[bytes]:
            while True:
                chunk = await upstream.content.readany()
                if not chunk:
                    return
                yield chunk

        failed = False
        complete = False
        try:
            await response.prepare(request)
            outcome = await guard_event_stream(
                chunks(),
                response.write,
                judge,
                adapter,
                window_chars=check.window_chars,
                max_window_bytes=check.max_window_bytes,
                replacement=replacement,
                error_event=error_event,
                fail_closed=fail_closed,
            )
            await response.write_eof()
            complete = not (outcome.replaced or outcome.failed)
            trace.fields.update(response_checks=outcome.checks, response_replaced=outcome.replaced)
            if outcome.replaced:
                self.metrics.actions.labels("replace_response", "false").inc()
        except ConnectionResetError:  # before ClientError: aiohttp's reset error is both
            failed = True
            self._failure(trace, "client", "mid_response")
        except (aiohttp.ClientError, asyncio.TimeoutError):
            failed = True
            self._failure(trace, "upstream", "mid_response")
        finally:
            if complete:
                upstream.release()
            else:
                upstream.close()  # stops reading the rest of a replaced answer
            if failed and request.transport is not None:
                request.transport.close()
        return self._finish(trace, response)

"""The request flow: read, classify, decide, then forward, block, steer or flag.

One :class:`Proxy` serves every route. Chat routes (OpenAI or a policy's JSON
routes) are classified; any other path is relayed untouched. Each chat
request travels as one :class:`~sidecar.exchange.Exchange`; verdicts come
from the :class:`~sidecar.judge.Judge`, answers are checked by
:class:`~sidecar.response_check.AnswerCheck`. Every outcome — including each
failure — ends in a response and one log event; nothing is dropped silently.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import replace

import aiohttp
from aiohttp import web

from sidecar.adapters.base import FINISHED, Adapter, Ending, ReplyMeta, parse_request, refusal
from sidecar.audit import AuditTrail, conversation_hmac
from sidecar.bundles import BundleCheck
from sidecar.compat import deadline
from sidecar.conversation import context_for_classifier
from sidecar.decisions import Decision, at_threshold, decide, rule_category, threshold_for
from sidecar.exchange import H_ACTION, H_FAILURE, H_UNJUDGED, H_VERDICT, Exchange, Outcomes, Trace
from sidecar.grpc_clients import ClassifierClient, ServiceFailure, SteerClient, to_proto_messages
from sidecar.http_errors import (
    BundleMismatch,
    MethodNotAllowed,
    RequestTimeout,
    UnsupportedMediaType,
    classifier_failure,
    status_of,
)
from sidecar.judge import INVALID, OVERSIZE, Judge, Judgement, RecentVerdicts
from sidecar.metrics import Metrics
from sidecar.overlap import EarlySend
from sidecar.policy import Action, FailureMode, Oversize, Policy, Route
from sidecar.reload import PolicyVersion
from sidecar.response_check import AnswerCheck, is_json
from sidecar.routing import refuse_coding, refuse_unknown
from sidecar.settings import SidecarSettings
from sidecar.upstream import Upstream, body_decoded, forwarded_headers, stream_back
from steerguard.errors import InvalidInput, PayloadTooLarge, SteerguardError, TooLong, UpstreamError
from steerguard.v1 import common_pb2, steer_pb2

_FINISH = {"stop": "stop", "length": "length", "cancelled": "stop", "": "stop"}


class Proxy:
    """Handlers for chat routes and pass-through."""

    def __init__(
        self,
        settings: SidecarSettings,
        classifier: ClassifierClient,
        steer: SteerClient,
        upstream: Upstream,
        metrics: Metrics,
        audit: AuditTrail,
        bundles: BundleCheck,
    ) -> None:
        self.settings = settings
        self.bundles = bundles
        self.classifier = classifier
        self.steer = steer
        self.upstream = upstream
        self.metrics = metrics
        self.outcomes = Outcomes(metrics, audit)
        memo = RecentVerdicts(settings.verdict_cache_size, settings.verdict_cache_ttl_s)
        self.judge = Judge(
            classifier,
            self.outcomes,
            timeout_s=settings.classify_timeout_s,
            memo=memo,
        )
        self.answers = AnswerCheck(self.judge, self.outcomes)

    async def _read_body(self, request: web.Request) -> bytes:
        """The request body, refusing wrong types, oversized and slow bodies before parsing."""
        if not is_json(request.headers.get("Content-Type", "")):
            raise UnsupportedMediaType("content type must be application/json")
        values = request.headers.getall("Content-Encoding", ())
        refused = refuse_coding(values, body_decoded(request), accepted="send identity, gzip or deflate")
        if refused is not None:
            raise refused
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

    # ----------------------------------------------------------- pass-through

    def wrong_method(self, request: web.Request, route: Route) -> web.StreamResponse:
        """A chat path asked with another method: 405, never relayed (a GET with a body is a bypass)."""
        trace = Trace.for_request(request, route.path)
        allowed = ", ".join(route.methods)
        error = MethodNotAllowed(f"{route.path} takes {allowed}")
        return self.outcomes.error(trace, error, {"Allow": allowed})

    async def passthrough(self, request: web.Request, version: PolicyVersion) -> web.StreamResponse:
        """Any path without a route: relayed untouched, or refused as the policy says."""
        trace = Trace.for_request(request, "passthrough")
        trace.fields["policy_version"] = version.digest
        refused = refuse_unknown(version.policy, request.method, request.body_exists)
        if refused is not None:
            return self.outcomes.error(trace, refused)
        body = request.content if request.body_exists else None
        try:
            upstream = await self.upstream.send(
                request.method, request.raw_path, forwarded_headers(request), body
            )
        except UpstreamError as exc:
            self.outcomes.failure(trace, "upstream", status_of(exc)[1])
            return self.outcomes.error(trace, exc)
        response, failed = await stream_back(request, upstream, {})
        if failed:
            self.outcomes.failure(trace, failed, "mid_response")
        return self.outcomes.finish(trace, response, upstream_status=upstream.status)

    # -------------------------------------------------------------- chat flow

    async def chat(
        self, request: web.Request, route: Route, adapter: Adapter, version: PolicyVersion
    ) -> web.StreamResponse:
        """Judge every text of the request (sidecar.adapters), then act per the policy ``route`` is from."""
        policy = version.policy
        ex = Exchange(request, Trace.for_request(request, route.path), route, adapter, policy)
        ex.trace.fields["policy_version"] = version.digest
        if self.bundles.refusing:
            classifier, steer = self.bundles.ids
            reason = f"the classifier serves bundle {classifier} and the steer service {steer}"
            return self.outcomes.error(ex.trace, BundleMismatch(reason))
        try:
            ex.body = await self._read_body(request)
            ex.chat = await parse_request(adapter, ex.body)
        except SteerguardError as exc:
            return self.outcomes.error(ex.trace, exc)
        ex.trace.fields.update(prompt_chars=ex.chat.prompt_chars, stream=ex.chat.stream)
        if ex.chat.unjudged:
            # Parts with no text to read (images, audio) cannot be judged: counted and marked, never silent,
            # and refused outright when the policy says so.
            ex.trace.fields["unjudged_parts"] = list(ex.chat.unjudged)
            self.metrics.failures.labels("classifier", "unjudged_part").inc()
            if policy.on_unjudged == "reject":
                kinds = ", ".join(sorted(set(ex.chat.unjudged)))
                error = InvalidInput(
                    f"the request carries parts that cannot be judged ({kinds}; policy on_unjudged)"
                )
                return self.outcomes.error(ex.trace, error, {H_UNJUDGED: kinds})
        try:
            ex.context = context_for_classifier(
                ex.chat.messages,
                max_messages=policy.context_messages,
                max_chars=policy.context_chars,
            )
        except TooLong as exc:
            return await self._oversize(ex, Judgement(None, OVERSIZE, exc))
        ex.trace.fields["context_turns"] = len(ex.context)
        if self.outcomes.audit.enabled:
            ex.trace.prompt_hmac = conversation_hmac(self.outcomes.audit.salt, ex.context)
        if route.overlap:
            ex.early = EarlySend(self._send(ex))
        try:
            judgement = await self.judge.judge(
                ex.trace,
                "request",
                ex.context,
                threshold=policy.threshold,
                lowest=policy.lowest_cut(ex.route),
            )
            if judgement.verdict is None:
                return await self._unjudged(ex, judgement)
            return await self._act(ex, judgement.verdict)
        finally:
            await self._drop_early(ex)

    def _send(self, ex: Exchange) -> Awaitable[aiohttp.ClientResponse]:
        """The original request, unchanged, to the chatbot."""
        request = ex.request
        headers = forwarded_headers(request)
        if ex.route.response_check.enabled:
            # The answer is judged as it comes, so it is asked for uncompressed: a compressed
            # stream cannot be read as it goes, and a coding the check cannot undo (br) would
            # leave the answer unjudged on a fail-open route, at the client's asking.
            headers["Accept-Encoding"] = "identity"
        return self.upstream.send(request.method, request.raw_path, headers, ex.body)

    async def _drop_early(self, ex: Exchange) -> None:
        """Cancel an overlap-mode request the verdict did not let through (sidecar.overlap)."""
        early, ex.early = ex.early, None
        if early is not None:
            await early.drop()
            self.metrics.overlap.labels("cancelled").inc()
            ex.trace.fields["overlap"] = "cancelled"

    async def _unjudged(self, ex: Exchange, judgement: Judgement) -> web.StreamResponse:
        """No verdict. Input the classifier refused to judge is the client's error (400), whatever the
        route's failure mode: it is never forwarded unjudged. An unreachable or slow classifier
        follows the route's ``on_classifier_error`` (closed: 503; open: forwarded, marked)."""
        if judgement.failure == OVERSIZE:
            return await self._oversize(ex, judgement)
        if judgement.failure == INVALID:
            self.outcomes.failure(ex.trace, "classifier", "invalid")
            error = judgement.error or InvalidInput("the request could not be judged")
            marks = {H_VERDICT: "unknown", H_ACTION: "refuse", H_FAILURE: "classifier-invalid"}
            return self.outcomes.error(ex.trace, error, marks)
        if ex.route.on_classifier_error.mode_for(judgement.failure) is FailureMode.CLOSED:
            self.metrics.actions.labels("fail_closed", "false").inc()
            reason = judgement.error.reason if judgement.error else judgement.failure
            failure = classifier_failure(judgement.failure, f"request could not be checked: {reason}")
            return self.outcomes.error(ex.trace, failure, {H_VERDICT: "unknown", H_ACTION: "fail-closed"})
        self.metrics.actions.labels("fail_open", "false").inc()
        ex.mark("fail-open", f"classifier-{judgement.failure}")
        return await self._forward(ex)

    async def _oversize(self, ex: Exchange, judgement: Judgement) -> web.StreamResponse:
        """Longer than the classifier judges: the route's ``on_oversize``, visible either way."""
        self.outcomes.failure(ex.trace, "classifier", OVERSIZE)
        if ex.route.on_oversize is Oversize.BLOCK:
            reason = judgement.error.reason if judgement.error else "the request is too long to judge"
            error = PayloadTooLarge(f"{reason} (policy on_oversize: block)")
            marks = {H_VERDICT: "unknown", H_ACTION: "block", H_FAILURE: OVERSIZE}
            return self.outcomes.error(ex.trace, error, marks)
        self.metrics.actions.labels("flag", "false").inc()
        ex.mark("flag", OVERSIZE)
        return await self._forward(ex)

    def _decide(self, policy: Policy, verdict: common_pb2.Verdict) -> Decision:
        """The policy's decision; a language the bundle was not calibrated for follows ``on_language``."""
        decision = decide(policy, verdict.unsafe, rule_category(policy, verdict))
        if verdict.language_calibrated or not verdict.language:
            return decision
        self.metrics.uncalibrated_languages.labels(verdict.language, policy.on_language).inc()
        wanted = {"block": Action.BLOCK, "flag": Action.FLAG}.get(policy.on_language)
        if (
            wanted is None
            or decision.intended not in (Action.ALLOW, Action.FLAG)
            or decision.intended is wanted
        ):
            return decision
        if decision.shadow:  # shadow mode forwards everything; it records what would have happened
            return replace(decision, intended=wanted)
        return replace(decision, action=wanted, intended=wanted)

    async def _act(self, ex: Exchange, verdict: common_pb2.Verdict) -> web.StreamResponse:
        """A verdict at the threshold in force: the decision for it (shadow, block, steer, forward)."""
        ex.verdict = verdict = at_threshold(verdict, threshold_for(ex.policy, ex.route, verdict))
        self.metrics.thresholds.labels(ex.route.path, f"{verdict.threshold:.4f}").inc()
        ex.decision = decision = self._decide(ex.policy, verdict)
        self.metrics.actions.labels(decision.intended.value, str(decision.shadow).lower()).inc()
        ex.trace.fields.update(
            verdict="unsafe" if verdict.unsafe else "safe",
            score=round(verdict.score, 4),
            category=verdict.category if verdict.unsafe else "",
            hazard=verdict.hazard if verdict.unsafe else "",
            category_unsure=verdict.unsafe and verdict.category_unsure,
            cached=verdict.cached,
            bundle_id=verdict.bundle_id,
            threshold=round(verdict.threshold, 4),
            action=decision.intended.value,
            shadow=decision.shadow,
        )
        if decision.shadow:
            ex.mark("shadow")
            return await self._forward(ex)
        if decision.action is Action.BLOCK:
            return self._block(ex)
        if decision.action is Action.STEER:
            await self._drop_early(ex)  # before generating: the chatbot stops at once
            return await self._steer(ex)
        ex.mark(decision.action.value)
        return await self._forward(ex)

    # ---------------------------------------------------------------- forward

    async def _forward(self, ex: Exchange) -> web.StreamResponse:
        """Send the original request unchanged; relay (or check) the answer."""
        trace, request = ex.trace, ex.request
        added = time.perf_counter() - trace.start
        self.metrics.added_latency.labels(trace.route).observe(added)
        trace.fields["added_ms"] = round(added * 1000.0, 3)
        early, ex.early = ex.early, None
        if early is not None:
            self.metrics.overlap.labels("relayed").inc()
            trace.fields["overlap"] = "relayed"
        try:
            upstream = await (early.take() if early is not None else self._send(ex))
        except UpstreamError as exc:
            self.outcomes.failure(trace, "upstream", status_of(exc)[1])
            return self.outcomes.error(trace, exc, ex.marks)
        trace.fields["upstream_status"] = upstream.status
        self.outcomes.duration(trace, ex.marks[H_ACTION])
        if self.answers.applies(ex, upstream):
            checked = await self.answers.run(ex, upstream)
            if checked is not None:
                return checked
        response, failed = await stream_back(request, upstream, ex.marks)
        if failed:
            self.outcomes.failure(trace, failed, "mid_response")
        return self.outcomes.finish(trace, response)

    # ------------------------------------------------------- sidecar replies

    def _meta(self, ex: Exchange, action: str) -> ReplyMeta:
        verdict = ex.verdict
        assert verdict is not None
        return ReplyMeta(
            verdict="unsafe" if verdict.unsafe else "safe",
            unsafe=verdict.unsafe,
            category=verdict.category,
            score=verdict.score,
            action=action,
        )

    def _block(self, ex: Exchange, *, fallback: str | None = None) -> web.StreamResponse:
        """A refusal in the upstream's shape, status 200; the upstream is never called."""
        rule = ex.decision.rule if ex.decision else None
        text = rule.message if rule and rule.message else ex.policy.refusal_message
        reply = refusal(ex.adapter, ex.parsed, text, self._meta(ex, "block"))
        response = web.Response(
            status=reply.status,
            body=reply.body,
            headers={"Content-Type": reply.content_type, **reply.headers},
        )
        response.headers.update(ex.mark("block", fallback))
        self.outcomes.duration(ex.trace, "block")
        return self.outcomes.finish(ex.trace, response)

    def _generate_request(self, ex: Exchange) -> steer_pb2.GenerateRequest:
        params, chat, verdict = ex.policy.steer, ex.parsed, ex.verdict
        assert verdict is not None
        max_new = (
            params.max_new_tokens if chat.max_tokens is None else min(chat.max_tokens, params.max_new_tokens)
        )
        rule = ex.decision.rule if ex.decision else None
        if rule is not None and rule.vector == "category" and rule_category(ex.policy, verdict):
            steering = steer_pb2.Steering(
                mode=steer_pb2.Steering.CATEGORY, category=verdict.category, strength=rule.strength
            )
        elif rule is not None and rule.vector == "refusal-head":
            steering = steer_pb2.Steering(mode=steer_pb2.Steering.REFUSAL_HEAD)
        else:
            steering = steer_pb2.Steering(
                mode=steer_pb2.Steering.REFUSAL, strength=rule.strength if rule else 0.0
            )
        return steer_pb2.GenerateRequest(
            messages=to_proto_messages(ex.context),
            max_new_tokens=max(1, max_new),
            temperature=params.temperature if chat.temperature is None else chat.temperature,
            top_p=params.top_p if chat.top_p is None else chat.top_p,
            seed=chat.seed or 0,
            steering=steering,
        )

    def _steer_failed(self, ex: Exchange, exc: ServiceFailure | InvalidInput) -> web.StreamResponse:
        """The steer service failed before answering: the policy's refusal instead."""
        kind = exc.kind if isinstance(exc, ServiceFailure) else "invalid"
        self.outcomes.failure(ex.trace, "steer", kind)
        return self._block(ex, fallback=f"steer-{kind}")

    async def _steer(self, ex: Exchange) -> web.StreamResponse:
        """An answer from ``Steerer.Generate``; falls back to the refusal if the service fails first."""
        chunks = self.steer.generate(self._generate_request(ex), timeout=self.settings.steer_timeout_s)
        try:
            first: steer_pb2.GenerateChunk | None = await chunks.__anext__()
        except StopAsyncIteration:
            first = None
        except (ServiceFailure, InvalidInput) as exc:
            return self._steer_failed(ex, exc)
        ex.mark("steer")
        if ex.parsed.stream:
            return await self._steer_stream(ex, first, chunks)
        parts = [first.text] if first else []
        last = first
        try:
            async for chunk in chunks:
                parts.append(chunk.text)
                last = chunk
        except (ServiceFailure, InvalidInput) as exc:
            return self._steer_failed(ex, exc)
        reply = ex.adapter.reply(
            ex.parsed,
            "".join(parts),
            self._meta(ex, "steer"),
            Ending(_FINISH.get(last.finish_reason, "stop"), last.prompt_tokens, last.completion_tokens)
            if last
            else FINISHED,
        )
        response = web.Response(
            status=reply.status, body=reply.body, headers={"Content-Type": reply.content_type}
        )
        response.headers.update(ex.marks)
        self.outcomes.duration(ex.trace, "steer")
        return self.outcomes.finish(ex.trace, response)

    async def _steer_stream(
        self,
        ex: Exchange,
        first: steer_pb2.GenerateChunk | None,
        chunks: AsyncIterator[steer_pb2.GenerateChunk],
    ) -> web.StreamResponse:
        fmt = ex.adapter.stream_formatter(ex.parsed)
        response = web.StreamResponse(
            status=200, headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", **ex.marks}
        )
        self.outcomes.duration(ex.trace, "steer")
        last = first
        try:
            await response.prepare(ex.request)
            await response.write(fmt.start())
            if first is not None and first.text:
                await response.write(fmt.delta(first.text))
            try:
                async for chunk in chunks:
                    if chunk.text:
                        await response.write(fmt.delta(chunk.text))
                    last = chunk
            except (ServiceFailure, InvalidInput) as exc:
                self.outcomes.failure(
                    ex.trace, "steer", exc.kind if isinstance(exc, ServiceFailure) else "invalid"
                )
                await response.write(fmt.error("the answer was interrupted"))
            else:
                finish = _FINISH.get(last.finish_reason if last else "", "stop")
                usage = (last.prompt_tokens, last.completion_tokens) if last else (0, 0)
                await response.write(fmt.finish(finish, *usage))
            await response.write_eof()
        except ConnectionResetError:
            self.outcomes.failure(ex.trace, "client", "mid_response")
        finally:
            await chunks.aclose()  # type: ignore[attr-defined]
        return self.outcomes.finish(ex.trace, response)

"""gRPC clients for the classifier and steer services.

Channels are built once per process and kept open (keep-alive pings find dead
peers); ``dns:///`` targets with the ``round_robin`` policy spread calls over
every address a name resolves to, which is what a Kubernetes headless Service
returns. Every call has a deadline; gRPC's own retry policy retries
``UNAVAILABLE`` only (a pod going away), never a deadline or a refusal, so a
request is never classified twice after the service has begun work on it.
Errors come back as :mod:`steerguard.errors` classes whose reasons are safe to
show a client.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sidecar.conversation import Message
from steerguard.errors import InvalidInput, TooLong, UpstreamError
from steerguard.grpc_common.client import bearer_metadata, target_for
from steerguard.v1 import (
    classifier_pb2,
    classifier_pb2_grpc,
    common_pb2,
    steer_pb2,
    steer_pb2_grpc,
)

SERVICES = ("steerguard.v1.Classifier", "steerguard.v1.Steerer", "grpc.health.v1.Health")


class ServiceFailure(UpstreamError):
    """A service could not answer; ``kind`` is ``unavailable``, ``deadline`` or ``error``."""

    def __init__(self, service: str, kind: str, code: str) -> None:
        super().__init__(f"{service} service {kind.replace('_', ' ')}")
        self.service = service
        self.kind = kind
        self.code = code


@dataclass(frozen=True)
class ChannelSettings:
    """How to reach one service."""

    address: str
    token: str | None = None
    tls_ca: str | None = None
    tls_server_name: str | None = None
    keepalive_s: float = 30.0
    retry_attempts: int = 3
    max_message_bytes: int = 4 * 1024 * 1024


def service_config(retry_attempts: int) -> str:
    """Round-robin balancing and retries on UNAVAILABLE only."""
    config: dict[str, Any] = {"loadBalancingConfig": [{"round_robin": {}}]}
    if retry_attempts > 1:
        config["methodConfig"] = [
            {
                "name": [{"service": name} for name in SERVICES],
                "retryPolicy": {
                    "maxAttempts": min(retry_attempts, 5),
                    "initialBackoff": "0.02s",
                    "maxBackoff": "0.2s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
    return json.dumps(config)


def channel_options(settings: ChannelSettings) -> list[tuple[str, Any]]:
    """Keep-alive, reconnect and retry options shared by both clients."""
    options: list[tuple[str, Any]] = [
        ("grpc.service_config", service_config(settings.retry_attempts)),
        ("grpc.enable_retries", 1 if settings.retry_attempts > 1 else 0),
        ("grpc.keepalive_time_ms", int(settings.keepalive_s * 1000)),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),  # servers allow it (grpc_common.server)
        ("grpc.http2.max_pings_without_data", 0),
        # Come back quickly after a restart instead of gRPC's default 2-minute backoff cap.
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.min_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 2_000),
        ("grpc.dns_min_time_between_resolutions_ms", 5_000),
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
    ]
    if settings.tls_server_name:
        options.append(("grpc.ssl_target_name_override", settings.tls_server_name))
    return options


def open_channel(settings: ChannelSettings) -> grpc.aio.Channel:
    """A plaintext or TLS channel (TLS when a CA bundle is given)."""
    options = channel_options(settings)
    if settings.tls_ca:
        creds = grpc.ssl_channel_credentials(root_certificates=Path(settings.tls_ca).read_bytes())
        return grpc.aio.secure_channel(target_for(settings.address), creds, options=options)
    return grpc.aio.insecure_channel(target_for(settings.address), options=options)


def _metadata(token: str | None) -> tuple[tuple[str, str], ...] | None:
    # Plain metadata (not call credentials) so it also works on plaintext channels in a cluster.
    return bearer_metadata(token) or None


def _failure(service: str, error: grpc.aio.AioRpcError) -> Exception:
    return _failure_of(service, error.code(), error.details())


def _failure_of(service: str, code: grpc.StatusCode, details: str | None) -> Exception:
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        # Service reasons are safe to show by contract (steerguard.errors).
        return InvalidInput(details or "invalid request")
    if code == grpc.StatusCode.OUT_OF_RANGE:
        return TooLong(details or "the request is too long to judge")
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return ServiceFailure(service, "deadline", code.name)
    if code == grpc.StatusCode.UNAVAILABLE:
        return ServiceFailure(service, "unavailable", code.name)
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return ServiceFailure(service, "overloaded", code.name)
    return ServiceFailure(service, "error", code.name)


def to_proto_messages(messages: Sequence[Message]) -> list[common_pb2.ChatMessage]:
    return [common_pb2.ChatMessage(role=m.role, content=m.content) for m in messages]


async def _health(channel: grpc.aio.Channel, metadata: Any, timeout: float) -> bool:
    stub = health_pb2_grpc.HealthStub(channel)
    try:
        reply = await stub.Check(
            health_pb2.HealthCheckRequest(service=""), timeout=timeout, metadata=metadata
        )
    except grpc.aio.AioRpcError as exc:
        # A server without the health service still answered: it is reachable.
        return exc.code() == grpc.StatusCode.UNIMPLEMENTED
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


async def _describe(stub: Any, service: str, metadata: Any, timeout: float) -> common_pb2.BundleInfo:
    try:
        info: common_pb2.BundleInfo = await stub.DescribeBundle(
            common_pb2.DescribeBundleRequest(), timeout=timeout, metadata=metadata
        )
    except grpc.aio.AioRpcError as exc:
        raise _failure(service, exc) from None
    return info


class ClassifierClient:
    """``Classifier.Classify`` with a deadline."""

    def __init__(self, settings: ChannelSettings) -> None:
        self._channel = open_channel(settings)
        self._stub = classifier_pb2_grpc.ClassifierStub(self._channel)
        self._metadata = _metadata(settings.token)
        # Set once the classifier answered ClassifyStream with UNIMPLEMENTED (sidecar.judge.AnswerJudge).
        self.stream_unimplemented = False

    async def classify(
        self,
        messages: Sequence[Message],
        *,
        timeout: float,
        threshold: float | None = None,
        answer: str | None = None,
        lowest: float | None = None,
    ) -> common_pb2.Verdict:
        """The verdict on ``messages``, or on ``answer`` as the assistant's reply to them.

        ``lowest``: the lowest cut the caller may apply to the score (``lowest_threshold``).
        """
        request = classifier_pb2.ClassifyRequest(messages=to_proto_messages(messages), answer=answer or "")
        if threshold is not None:
            request.threshold = threshold
        if lowest is not None:
            request.lowest_threshold = lowest
        try:
            return await self._stub.Classify(request, timeout=timeout, metadata=self._metadata)
        except grpc.aio.AioRpcError as exc:
            raise _failure("classifier", exc) from None

    async def describe(self, timeout: float) -> common_pb2.BundleInfo:
        """The bundle the classifier serves."""
        return await _describe(self._stub, "classifier", self._metadata, timeout)

    def answer_stream(
        self, messages: Sequence[Message], *, threshold: float | None = None
    ) -> AnswerStreamCall:
        """A ``ClassifyStream`` call for one answer to ``messages`` (opened on its first check)."""
        first = classifier_pb2.AnswerChunk(messages=to_proto_messages(messages))
        if threshold is not None:
            first.threshold = threshold
        return AnswerStreamCall(lambda: self._stub.ClassifyStream(metadata=self._metadata), first)

    async def ready(self, timeout: float) -> str:
        """``reachable``, ``unreachable``, or ``unauthenticated`` (it answers, but refuses our token).

        Health checks are open to any caller (kubelet probes carry no token), so
        an authenticated call follows: an empty ``ClassifyBatch``, which the
        classifier refuses as invalid without running the model. A sidecar
        started with a wrong or missing token would otherwise report ready
        while every request failed.
        """
        if not await _health(self._channel, self._metadata, timeout):
            return "unreachable"
        try:
            await self._stub.ClassifyBatch(
                classifier_pb2.ClassifyBatchRequest(), timeout=timeout, metadata=self._metadata
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.UNAUTHENTICATED:
                return "unauthenticated"
        return "reachable"

    async def close(self) -> None:
        await self._channel.close()


class AnswerStreamCall:
    """One answer's ``ClassifyStream``: each check sends the answer's new text and reads the verdict.

    The call has no deadline of its own (an answer may stream for minutes);
    each check has ``timeout``, and a check that times out cancels the call.
    :meth:`close` cancels it too, which frees the classifier's stream.
    """

    def __init__(self, open_call: Any, first: classifier_pb2.AnswerChunk) -> None:
        self._open = open_call
        self._call: Any = None
        self._first: classifier_pb2.AnswerChunk | None = first

    async def judge(self, text: str, *, timeout: float) -> common_pb2.Verdict:
        """The verdict on the answer so far, after ``text``."""
        chunk, self._first = self._first or classifier_pb2.AnswerChunk(), None
        chunk.text = text
        try:
            if self._call is None:
                self._call = self._open()
            await asyncio.wait_for(self._call.write(chunk), timeout)
            reply = await asyncio.wait_for(self._call.read(), timeout)
        except grpc.aio.AioRpcError as exc:
            raise _failure("classifier", exc) from None
        except asyncio.TimeoutError:
            self.close()
            raise ServiceFailure("classifier", "deadline", "DEADLINE_EXCEEDED") from None
        except asyncio.InvalidStateError:  # written to after the call ended: its status says why
            raise _failure_of("classifier", await self._call.code(), await self._call.details()) from None
        if reply is grpc.aio.EOF:
            raise _failure_of("classifier", await self._call.code(), await self._call.details())
        return reply  # type: ignore[no-any-return]

    def close(self) -> None:
        if self._call is not None:
            self._call.cancel()


class SteerClient:
    """``Steerer.Generate`` as an async iterator of chunks."""

    def __init__(self, settings: ChannelSettings) -> None:
        self._channel = open_channel(settings)
        self._stub = steer_pb2_grpc.SteererStub(self._channel)
        self._metadata = _metadata(settings.token)

    async def generate(
        self, request: steer_pb2.GenerateRequest, *, timeout: float
    ) -> AsyncIterator[steer_pb2.GenerateChunk]:
        call = self._stub.Generate(request, timeout=timeout, metadata=self._metadata)
        try:
            async for chunk in call:
                yield chunk
        except grpc.aio.AioRpcError as exc:
            raise _failure("steer", exc) from None
        finally:
            call.cancel()  # no-op when finished; stops generation when the client went away

    async def ready(self, timeout: float) -> bool:
        return await _health(self._channel, self._metadata, timeout)

    async def describe(self, timeout: float) -> common_pb2.BundleInfo:
        """The bundle the steer service serves."""
        return await _describe(self._stub, "steer", self._metadata, timeout)

    async def close(self) -> None:
        await self._channel.close()

"""A light Python client for the classifier service (``pip install steerguard``: no torch).

::

    from steerguard.client import Classifier

    with Classifier("classifier.steerguard:50051", token="...") as guard:
        verdict = guard.classify("How do I pick a lock?")
        if verdict.unsafe:
            print(verdict.category, verdict.score)

``AsyncClassifier`` is the same for asyncio. Every call has a deadline
(``timeout_s``); gRPC retries only ``UNAVAILABLE`` (a pod going away), never a
call the service may have started; a ``dns:///`` target with round-robin
spreads calls over every pod of a headless Service. Settings not given as
arguments come from ``STEERGUARD_CLASSIFIER``, ``STEERGUARD_AUTH_TOKEN`` (or
``STEERGUARD_AUTH_TOKEN_FILE``), ``STEERGUARD_TLS_CA``,
``STEERGUARD_TLS_CLIENT_CERT`` and ``STEERGUARD_TLS_CLIENT_KEY``. Errors are
:mod:`steerguard.errors` classes whose ``reason`` is the service's:
``InvalidInput`` (``TooLong`` past the length cap), ``Unauthenticated``,
``Overloaded``, ``DeadlineExceeded``, ``UpstreamError`` (unreachable, still
loading, or an internal error).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from steerguard.grpc_common.client import bearer_metadata, make_channel
from steerguard.grpc_common.status import error_for
from steerguard.v1 import classifier_pb2, classifier_pb2_grpc, common_pb2
from steerguard.verdict import Verdict

__all__ = ["AsyncClassifier", "Classifier", "ClientSettings", "Verdict"]

SERVICE = "steerguard.v1.Classifier"
DEFAULT_ADDRESS = "127.0.0.1:50051"

# A request: a prompt, or a conversation as [{"role": ..., "content": ...}, ...].
Request = str | Sequence[Mapping[str, str]]


@dataclass(frozen=True)
class ClientSettings:
    """Where the classifier is and how to reach it; arguments first, then ``STEERGUARD_*`` variables."""

    address: str = DEFAULT_ADDRESS
    token: str | None = None
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    timeout_s: float = 2.0
    attempts: int = 3

    @classmethod
    def resolve(cls, address: str | None = None, **given: Any) -> ClientSettings:
        env = os.environ.get
        token = given.pop("token", None) or env("STEERGUARD_AUTH_TOKEN")
        token_file = env("STEERGUARD_AUTH_TOKEN_FILE")
        if not token and token_file:
            token = Path(token_file).read_text().strip() or None
        defaults = {
            "tls_ca": env("STEERGUARD_TLS_CA"),
            "tls_cert": env("STEERGUARD_TLS_CLIENT_CERT"),
            "tls_key": env("STEERGUARD_TLS_CLIENT_KEY"),
        }
        chosen = {k: v for k, v in given.items() if v is not None}
        return cls(
            address=address or env("STEERGUARD_CLASSIFIER") or DEFAULT_ADDRESS,
            token=token,
            **{**{k: v for k, v in defaults.items() if v}, **chosen},
        )

    def channel(self, *, aio: bool) -> Any:
        return make_channel(
            self.address,
            service_names=[SERVICE],
            tls_ca=self.tls_ca,
            tls_cert=self.tls_cert,
            tls_key=self.tls_key,
            attempts=self.attempts,
            aio=aio,
        )


def to_request(
    request: Request, threshold: float | None = None, answer: str | None = None
) -> classifier_pb2.ClassifyRequest:
    """A prompt or a conversation as a ``ClassifyRequest``."""
    if isinstance(request, str):
        out = classifier_pb2.ClassifyRequest(prompt=request)
    else:
        turns = [common_pb2.ChatMessage(role=m["role"], content=m["content"]) for m in request]
        out = classifier_pb2.ClassifyRequest(messages=turns)
    if threshold is not None:
        out.threshold = threshold
    if answer:
        out.answer = answer
    return out


def to_batch(requests: Sequence[Request], threshold: float | None) -> classifier_pb2.ClassifyBatchRequest:
    return classifier_pb2.ClassifyBatchRequest(requests=[to_request(r, threshold) for r in requests])


class _Client:
    """What both clients share: settings, the stub over their channel, the call options."""

    def __init__(self, address: str | None, settings: dict[str, Any], *, aio: bool) -> None:
        self.settings = ClientSettings.resolve(address, **settings)
        self._channel = self.settings.channel(aio=aio)
        self._stub = classifier_pb2_grpc.ClassifierStub(self._channel)
        self._metadata = bearer_metadata(self.settings.token) or None

    def _options(self, timeout_s: float | None) -> dict[str, Any]:
        return {"timeout": timeout_s or self.settings.timeout_s, "metadata": self._metadata}


class Classifier(_Client):
    """Blocking client of ``steerguard.v1.Classifier``; one channel, reused; a context manager."""

    def __init__(self, address: str | None = None, **settings: Any) -> None:
        super().__init__(address, settings, aio=False)

    def classify(
        self,
        request: Request,
        *,
        threshold: float | None = None,
        answer: str | None = None,
        timeout_s: float | None = None,
    ) -> Verdict:
        """The verdict on a prompt or conversation (or, with ``answer``, on that answer to it)."""
        call = to_request(request, threshold, answer)
        try:
            reply = self._stub.Classify(call, **self._options(timeout_s))
        except grpc.RpcError as exc:
            raise error_for(exc.code(), exc.details()) from None
        return Verdict.from_proto(reply)

    def classify_batch(
        self, requests: Sequence[Request], *, threshold: float | None = None, timeout_s: float | None = None
    ) -> list[Verdict]:
        """One verdict per request, in order (one RPC)."""
        try:
            reply = self._stub.ClassifyBatch(to_batch(requests, threshold), **self._options(timeout_s))
        except grpc.RpcError as exc:
            raise error_for(exc.code(), exc.details()) from None
        return [Verdict.from_proto(v) for v in reply.verdicts]

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Classifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncClassifier(_Client):
    """The asyncio client (``grpc.aio``); create it inside the running event loop."""

    def __init__(self, address: str | None = None, **settings: Any) -> None:
        super().__init__(address, settings, aio=True)

    async def classify(
        self,
        request: Request,
        *,
        threshold: float | None = None,
        answer: str | None = None,
        timeout_s: float | None = None,
    ) -> Verdict:
        call = to_request(request, threshold, answer)
        try:
            reply = await self._stub.Classify(call, **self._options(timeout_s))
        except grpc.aio.AioRpcError as exc:
            raise error_for(exc.code(), exc.details()) from None
        return Verdict.from_proto(reply)

    async def classify_batch(
        self, requests: Sequence[Request], *, threshold: float | None = None, timeout_s: float | None = None
    ) -> list[Verdict]:
        try:
            reply = await self._stub.ClassifyBatch(to_batch(requests, threshold), **self._options(timeout_s))
        except grpc.aio.AioRpcError as exc:
            raise error_for(exc.code(), exc.details()) from None
        return [Verdict.from_proto(v) for v in reply.verdicts]

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> AsyncClassifier:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

"""The ``steerguard.v1.Steerer`` servicer: decode the request, call the core, encode chunks.

Errors are raised as :mod:`steerguard.errors` exceptions and mapped to status
codes by the shared interceptor. Cancellation has two paths, both idempotent:
gRPC's termination callback (client cancel, deadline, server stop) and the
generator's ``finally`` (the stream was abandoned).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import grpc

from steer_service import convert
from steer_service.service import SteerService
from steerguard.errors import NotReady
from steerguard.grpc_common.describe import bundle_info
from steerguard.v1 import common_pb2, steer_pb2, steer_pb2_grpc


class SteererServicer(steer_pb2_grpc.SteererServicer):
    def __init__(self, service: Callable[[], SteerService | None]) -> None:
        self._service = service  # None while the model is still loading

    def _ready(self) -> SteerService:
        service = self._service()
        if service is None:
            raise NotReady("the steer service is still loading its model")
        return service

    def Generate(
        self, request: steer_pb2.GenerateRequest, context: grpc.ServicerContext
    ) -> Iterator[steer_pb2.GenerateChunk]:
        service = self._ready()
        handle = service.submit(convert.generate_input(request), timeout=context.time_remaining())
        if not context.add_callback(handle.cancel):
            handle.cancel()  # the RPC already ended
        try:
            for chunk in handle:
                yield convert.chunk_to_proto(chunk)
        finally:
            handle.cancel()

    def DescribeBundle(
        self, request: common_pb2.DescribeBundleRequest, context: grpc.ServicerContext
    ) -> common_pb2.BundleInfo:
        return bundle_info(self._ready().bundle)

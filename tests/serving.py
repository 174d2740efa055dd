"""A classifier core served on an in-process gRPC server (port 0), for tests that talk to it."""

from __future__ import annotations

from collections.abc import Iterator

import grpc

from classifier_service.core import ClassifierCore
from classifier_service.server import create_server
from classifier_service.servicer import ClassifierServicer
from steerguard.v1 import classifier_pb2_grpc


def serve_address(core: ClassifierCore) -> Iterator[str]:
    """Yield ``127.0.0.1:PORT`` of a server answering with ``core``; stop it and close the core after."""
    server = create_server("127.0.0.1:0", ClassifierServicer(core)).start()
    server.set_serving()
    try:
        yield f"127.0.0.1:{server.port}"
    finally:
        server.stop(0)
        core.close()


def serve_core(core: ClassifierCore) -> Iterator[classifier_pb2_grpc.ClassifierStub]:
    """Yield a stub over a real channel to ``core``."""
    for address in serve_address(core):
        with grpc.insecure_channel(address) as channel:
            yield classifier_pb2_grpc.ClassifierStub(channel)

"""The classifier's gRPC server: shared plumbing plus our lenient request decoding.

The handlers are registered by hand rather than with the generated
``add_ClassifierServicer_to_server`` only to plug in the deserializers of
:mod:`classifier_service.wire`; method names and message types are those of
``classifier.proto``, so generated clients, reflection and ``grpcurl`` see the
ordinary service.
"""

from __future__ import annotations

import dataclasses

import grpc

from classifier_service.config import RPC_THREADS
from classifier_service.servicer import ClassifierServicer
from classifier_service.wire import (
    decode_answer_chunk,
    decode_classify_batch_request,
    decode_classify_request,
)
from steerguard.grpc_common.server import GrpcServer, ServerOptions, build_server
from steerguard.v1 import classifier_pb2, common_pb2

SERVICE_NAME = "steerguard.v1.Classifier"


def add_classifier_to_server(servicer: ClassifierServicer, server: grpc.Server) -> None:
    handlers = {
        "Classify": grpc.unary_unary_rpc_method_handler(
            servicer.Classify,
            request_deserializer=decode_classify_request,
            response_serializer=common_pb2.Verdict.SerializeToString,
        ),
        "ClassifyBatch": grpc.unary_unary_rpc_method_handler(
            servicer.ClassifyBatch,
            request_deserializer=decode_classify_batch_request,
            response_serializer=classifier_pb2.ClassifyBatchResponse.SerializeToString,
        ),
        "DescribeBundle": grpc.unary_unary_rpc_method_handler(
            servicer.DescribeBundle,
            request_deserializer=common_pb2.DescribeBundleRequest.FromString,
            response_serializer=common_pb2.BundleInfo.SerializeToString,
        ),
        "ClassifyStream": grpc.stream_stream_rpc_method_handler(
            servicer.ClassifyStream,
            request_deserializer=decode_answer_chunk,
            response_serializer=common_pb2.Verdict.SerializeToString,
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)


def create_server(
    addr: str, servicer: ClassifierServicer, options: ServerOptions | None = None
) -> GrpcServer:
    """Bind ``addr`` (port 0: a free one, see ``.port``); health is NOT_SERVING until ``set_serving()``.

    Every call gets a thread at once (at least ``RPC_THREADS``): a call waiting for its verdict
    only blocks, and a call the batcher will shed must reach admission without queueing
    behind them, or "shed at once" becomes "shed after the queue".
    """
    opts = options or ServerOptions()
    return build_server(
        addr,
        dataclasses.replace(opts, max_workers=max(opts.max_workers, RPC_THREADS)),
        service_names=[SERVICE_NAME],
        add_servicers=lambda server: add_classifier_to_server(servicer, server),
    )

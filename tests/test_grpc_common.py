"""Shared gRPC plumbing over a real channel: error mapping, auth, health, reflection."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from steerguard.errors import InvalidInput
from steerguard.grpc_common.server import GrpcServer, ServerOptions, build_server
from steerguard.v1 import classifier_pb2, classifier_pb2_grpc, common_pb2, steer_pb2, steer_pb2_grpc

SECRET_DETAIL = "secret internal detail /etc/passwd"


class Classifier(classifier_pb2_grpc.ClassifierServicer):
    def Classify(self, request, context):  # type: ignore[no-untyped-def]
        if request.prompt == "bad":
            raise InvalidInput("prompt is bad")
        if request.prompt == "boom":
            raise RuntimeError(SECRET_DETAIL)
        if request.prompt == "slow":
            time.sleep(1.0)
        return common_pb2.Verdict(score=0.25)


class Steerer(steer_pb2_grpc.SteererServicer):
    def Generate(self, request, context) -> Iterator[steer_pb2.GenerateChunk]:  # type: ignore[no-untyped-def]
        yield steer_pb2.GenerateChunk(text="a")
        if request.prompt == "bad":
            raise InvalidInput("stream went bad")
        if request.prompt == "boom":
            raise KeyError(SECRET_DETAIL)
        yield steer_pb2.GenerateChunk(text="b", finish_reason="stop")


def start(options: ServerOptions) -> GrpcServer:
    def add(server: grpc.Server) -> None:
        classifier_pb2_grpc.add_ClassifierServicer_to_server(Classifier(), server)
        steer_pb2_grpc.add_SteererServicer_to_server(Steerer(), server)

    names = ["steerguard.v1.Classifier", "steerguard.v1.Steerer"]
    return build_server("127.0.0.1:0", options, service_names=names, add_servicers=add).start()


@pytest.fixture()
def server() -> Iterator[GrpcServer]:
    srv = start(ServerOptions())
    yield srv
    srv.stop(0)


def test_errors_are_mapped_and_internals_hidden(server: GrpcServer) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        stub = classifier_pb2_grpc.ClassifierStub(ch)
        assert stub.Classify(classifier_pb2.ClassifyRequest(prompt="ok")).score == 0.25
        with pytest.raises(grpc.RpcError) as bad:
            stub.Classify(classifier_pb2.ClassifyRequest(prompt="bad"))
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert bad.value.details() == "prompt is bad"
        with pytest.raises(grpc.RpcError) as boom:
            stub.Classify(classifier_pb2.ClassifyRequest(prompt="boom"))
        assert boom.value.code() == grpc.StatusCode.INTERNAL
        assert boom.value.details() == "internal error"


def test_streaming_errors_are_mapped(server: GrpcServer) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        stub = steer_pb2_grpc.SteererStub(ch)
        assert [c.text for c in stub.Generate(steer_pb2.GenerateRequest(prompt="ok"))] == ["a", "b"]
        for prompt, code, detail in (
            ("bad", grpc.StatusCode.INVALID_ARGUMENT, "stream went bad"),
            ("boom", grpc.StatusCode.INTERNAL, "internal error"),
        ):
            got = []
            with pytest.raises(grpc.RpcError) as err:
                for chunk in stub.Generate(steer_pb2.GenerateRequest(prompt=prompt)):
                    got.append(chunk.text)
            assert got == ["a"]
            assert err.value.code() == code and err.value.details() == detail


def test_health_starts_not_serving_then_serving(server: GrpcServer) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        req = health_pb2.HealthCheckRequest(service="steerguard.v1.Classifier")
        assert stub.Check(req).status == health_pb2.HealthCheckResponse.NOT_SERVING
        server.set_serving()
        assert stub.Check(req).status == health_pb2.HealthCheckResponse.SERVING
        assert stub.Check(health_pb2.HealthCheckRequest()).status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_services(server: GrpcServer) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        stub = reflection_pb2_grpc.ServerReflectionStub(ch)
        responses = stub.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
        names = {s.name for r in responses for s in r.list_services_response.service}
    assert {"steerguard.v1.Classifier", "steerguard.v1.Steerer", "grpc.health.v1.Health"} <= names


def test_bearer_token_required() -> None:
    srv = start(ServerOptions(auth_token="s3cret"))
    try:
        with grpc.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
            stub = classifier_pb2_grpc.ClassifierStub(ch)
            req = classifier_pb2.ClassifyRequest(prompt="ok")
            for metadata in ((), (("authorization", "Bearer wrong"),)):
                with pytest.raises(grpc.RpcError) as err:
                    stub.Classify(req, metadata=metadata)
                assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(grpc.RpcError) as serr:
                list(steer_pb2_grpc.SteererStub(ch).Generate(steer_pb2.GenerateRequest(prompt="ok")))
            assert serr.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert stub.Classify(req, metadata=(("authorization", "Bearer s3cret"),)).score == 0.25
            health = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest())
            assert health.status == health_pb2.HealthCheckResponse.NOT_SERVING  # open without a token
    finally:
        srv.stop(0)


def test_tls_and_mtls(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from steerguard.grpc_common.certs import write_test_certs

    certs = write_test_certs(tmp_path)
    ca = certs.ca.read_bytes()
    override = (("grpc.ssl_target_name_override", "localhost"),)
    srv = start(ServerOptions(tls_cert=str(certs.server_cert), tls_key=str(certs.server_key)))
    try:
        creds = grpc.ssl_channel_credentials(root_certificates=ca)
        with grpc.secure_channel(f"localhost:{srv.port}", creds, options=override) as ch:
            assert (
                classifier_pb2_grpc.ClassifierStub(ch)
                .Classify(classifier_pb2.ClassifyRequest(prompt="x"))
                .score
                == 0.25
            )
    finally:
        srv.stop(0)
    srv = start(
        ServerOptions(
            tls_cert=str(certs.server_cert), tls_key=str(certs.server_key), tls_client_ca=str(certs.ca)
        )
    )
    try:
        no_client_cert = grpc.ssl_channel_credentials(root_certificates=ca)
        with (
            grpc.secure_channel(f"localhost:{srv.port}", no_client_cert, options=override) as ch,
            pytest.raises(grpc.RpcError),
        ):
            classifier_pb2_grpc.ClassifierStub(ch).Classify(
                classifier_pb2.ClassifyRequest(prompt="x"), timeout=5
            )
        mutual = grpc.ssl_channel_credentials(
            root_certificates=ca,
            private_key=certs.client_key.read_bytes(),
            certificate_chain=certs.client_cert.read_bytes(),
        )
        with grpc.secure_channel(f"localhost:{srv.port}", mutual, options=override) as ch:
            assert (
                classifier_pb2_grpc.ClassifierStub(ch)
                .Classify(classifier_pb2.ClassifyRequest(prompt="x"))
                .score
                == 0.25
            )
    finally:
        srv.stop(0)


def test_stop_drains_in_flight_calls() -> None:
    srv = start(ServerOptions())
    srv.set_serving()
    results: list[float] = []
    with grpc.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
        stub = classifier_pb2_grpc.ClassifierStub(ch)
        caller = threading.Thread(
            target=lambda: results.append(stub.Classify(classifier_pb2.ClassifyRequest(prompt="slow")).score)
        )
        caller.start()
        time.sleep(0.3)
        srv.stop(grace=5)
        caller.join()
        assert results == [0.25]
        with pytest.raises(grpc.RpcError) as err:
            stub.Classify(classifier_pb2.ClassifyRequest(prompt="ok"), timeout=2)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_named_tokens_give_callers_their_own_credentials_and_series(tmp_path: Path) -> None:
    from prometheus_client import REGISTRY

    from steerguard.grpc_common.interceptors import parse_tokens
    from steerguard.grpc_common.server import read_token

    tokens = tmp_path / "tokens"
    tokens.write_text("web:tok-web-1\nbatch-jobs:tok-batch-2\n")
    assert set(parse_tokens(read_token(None, str(tokens)) or "").values()) == {"web", "batch-jobs"}
    assert parse_tokens("a1b2c3") == {b"Bearer a1b2c3": "default"}  # one bare token, as before

    def calls(caller: str) -> float:
        labels = {"caller": caller, "method": "/steerguard.v1.Classifier/Classify"}
        return REGISTRY.get_sample_value("steerguard_grpc_calls_total", labels) or 0.0

    srv = start(ServerOptions(auth_token=read_token(None, str(tokens))))
    try:
        with grpc.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
            stub = classifier_pb2_grpc.ClassifierStub(ch)
            req = classifier_pb2.ClassifyRequest(prompt="ok")
            before = calls("web"), calls("batch-jobs")
            stub.Classify(req, metadata=(("authorization", "Bearer tok-web-1"),))
            stub.Classify(req, metadata=(("authorization", "Bearer tok-batch-2"),))
            stub.Classify(req, metadata=(("authorization", "Bearer tok-batch-2"),))
            assert (calls("web") - before[0], calls("batch-jobs") - before[1]) == (1.0, 2.0)
            for wrong in ("Bearer web:tok-web-1", "Bearer tok-web-1x", "tok-web-1"):
                with pytest.raises(grpc.RpcError) as err:
                    stub.Classify(req, metadata=(("authorization", wrong),))
                assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        srv.stop(0)

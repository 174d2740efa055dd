"""The Envoy examples in k8s/envoy agree with the ext_proc server and with Envoy's processing mode.

The ext_proc server judges a chat body only when Envoy sends it whole
(``sidecar.extproc.servicer``): both gateway configurations must buffer the
request body and send the response headers; they must call the Service and
port the Deployment serves, and the Deployment's environment must be flags
``steerguard serve extproc`` reads.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from sidecar.extproc.settings import ExtProcSettings, add_extproc_flags
from steerguard.settings import env_flags

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import k8s_manifests as km

ENVOY = Path(__file__).resolve().parent.parent / "k8s" / "envoy"


def _docs(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((ENVOY / name).read_text()) if d]


def _extproc() -> tuple[dict[str, Any], dict[str, Any]]:
    docs = _docs("extproc.yaml")
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    service = next(d for d in docs if d["kind"] == "Service")
    return deployment, service


def test_the_deployment_runs_serve_extproc_with_flags_it_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    deployment, service = _extproc()
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["args"] == ["serve", "extproc"]
    env = {e["name"]: e["value"] for e in container["env"]}
    parser = argparse.ArgumentParser()
    add_extproc_flags(parser)
    assert set(env) <= env_flags(parser), sorted(set(env) - env_flags(parser))
    for key in [k for k in os.environ if k.startswith("STEERGUARD_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    parser = argparse.ArgumentParser()
    add_extproc_flags(parser)
    ns = parser.parse_args([])
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ns.port == ports["grpc"] == ExtProcSettings().port
    assert ns.metrics_port == ports["metrics"]
    assert container["readinessProbe"]["grpc"]["port"] == ns.port
    assert service["spec"]["ports"][0]["port"] == ns.port
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert labels.get("steerguard.io/sidecar") == "true", (
        "the classifier's NetworkPolicy admits sidecar-labelled pods"
    )


def test_envoy_gateway_buffers_the_body_and_calls_the_service() -> None:
    policy = next(d for d in _docs("envoy-gateway.yaml") if d["kind"] == "EnvoyExtensionPolicy")
    (ext,) = policy["spec"]["extProc"]
    _, service = _extproc()
    (backend,) = ext["backendRefs"]
    assert backend["name"] == service["metadata"]["name"] and backend["port"] == ExtProcSettings().port
    assert ext["processingMode"]["request"]["body"] == "Buffered"
    assert (
        "response" in ext["processingMode"]
    )  # response headers are sent: the verdict headers reach the client
    assert ext["failOpen"] is False


def test_istio_filter_buffers_the_body_and_calls_the_service() -> None:
    (doc,) = _docs("istio-envoyfilter.yaml")
    (patch,) = doc["spec"]["configPatches"]
    config = patch["patch"]["value"]["typed_config"]
    assert config["@type"].endswith("envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor")
    mode = config["processing_mode"]
    assert mode["request_body_mode"] == "BUFFERED" and mode["response_header_mode"] == "SEND"
    assert mode["response_body_mode"] == "NONE" and config["allow_mode_override"] is True
    if importlib.util.find_spec("envoy") is not None:  # every field is one Envoy's API has
        from envoy.extensions.filters.http.ext_proc.v3 import ext_proc_pb2
        from google.protobuf import json_format

        fields = {k: v for k, v in config.items() if k != "@type"}
        json_format.ParseDict(fields, ext_proc_pb2.ExternalProcessor())
    port = ExtProcSettings().port
    assert (
        config["grpc_service"]["envoy_grpc"]["cluster_name"]
        == f"outbound|{port}||extproc.steerguard.svc.cluster.local"
    )


def test_the_envoy_kustomization_renders_and_validates() -> None:
    if km.kubectl() is None:
        if os.environ.get("CI"):
            pytest.fail("kubectl required in CI")
        pytest.skip("kubectl not found")
    objects = km.render(ENVOY)
    assert {o["kind"] for o in objects} == {"Deployment", "Service"}
    assert all(o["metadata"].get("namespace") == "steerguard" for o in objects)
    for version in km.K8S_VERSIONS:
        assert km.schema_errors(objects, version) == [], version

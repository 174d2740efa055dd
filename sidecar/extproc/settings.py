"""Flags of ``steerguard serve extproc`` (each also ``STEERGUARD_<FLAG>``) and the settings built from them.

Standard library only, so ``steerguard --help`` stays fast.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from sidecar.settings import service_token
from steerguard.errors import InvalidInput
from steerguard.settings import add_flag


@dataclass(frozen=True)
class ExtProcSettings:
    """Everything the ext_proc server needs from its flags (the one home of their defaults)."""

    classifier: str = "127.0.0.1:50051"
    host: str = "0.0.0.0"
    port: int = 50055
    policy_file: str | None = None
    policy_poll_s: float = 2.0
    auth_token: str | None = None  # sent to the classifier
    tls_ca: str | None = None
    tls_server_name: str | None = None
    classify_timeout_s: float = 2.0
    verdict_cache_size: int = 10000
    verdict_cache_ttl_s: float = 30.0
    grpc_retries: int = 3
    metrics_port: int = 0  # 0: no metrics endpoint
    grace_s: float = 10.0
    log_format: str = "json"
    log_level: str = "info"

    @classmethod
    def from_args(cls, ns: argparse.Namespace) -> ExtProcSettings:
        token = service_token(ns)
        if not 1 <= ns.grpc_retries <= 5:
            raise InvalidInput("--grpc-retries must be between 1 and 5")
        return cls(
            classifier=ns.classifier,
            host=ns.host,
            port=ns.port,
            policy_file=ns.policy,
            policy_poll_s=ns.policy_poll_s,
            auth_token=token or None,
            tls_ca=ns.tls_ca,
            tls_server_name=ns.tls_server_name,
            classify_timeout_s=ns.classify_timeout_ms / 1000.0,
            verdict_cache_size=ns.verdict_cache_size,
            verdict_cache_ttl_s=ns.verdict_cache_ttl_s,
            grpc_retries=ns.grpc_retries,
            metrics_port=ns.metrics_port,
            grace_s=ns.grace_seconds,
            log_format=ns.log_format,
            log_level=ns.log_level,
        )


def add_extproc_flags(parser: argparse.ArgumentParser) -> None:
    d = ExtProcSettings()
    add_flag(parser, "--host", default=d.host, help="address to listen on")
    add_flag(
        parser, "--port", type=int, default=d.port, help="gRPC port Envoy's ext_proc filter calls (0: free)"
    )
    add_flag(parser, "--classifier", default=d.classifier, help="classifier service HOST:PORT")
    add_flag(parser, "--policy", default=None, help="the sidecar's policy file (YAML or JSON)")
    add_flag(
        parser, "--policy-poll-s", type=float, default=d.policy_poll_s, help="policy file re-read interval"
    )
    add_flag(parser, "--auth-token", default=None, help="bearer token sent to the classifier")
    add_flag(parser, "--auth-token-file", default=None, help="read the bearer token from this file")
    add_flag(parser, "--tls-ca", default=None, help="CA bundle (PEM): use TLS toward the classifier")
    add_flag(parser, "--tls-server-name", default=None, help="expected TLS name of the classifier")
    add_flag(
        parser,
        "--classify-timeout-ms",
        type=int,
        default=int(d.classify_timeout_s * 1000),
        help="deadline of one classify call",
    )
    add_flag(parser, "--verdict-cache-size", type=int, default=d.verdict_cache_size, help="verdicts kept")
    add_flag(
        parser, "--verdict-cache-ttl-s", type=float, default=d.verdict_cache_ttl_s, help="kept this long"
    )
    add_flag(
        parser, "--grpc-retries", type=int, default=d.grpc_retries, help="attempts per call on UNAVAILABLE"
    )
    add_flag(parser, "--metrics-port", type=int, default=d.metrics_port, help="Prometheus port (0: off)")
    add_flag(parser, "--grace-seconds", type=float, default=d.grace_s, help="drain time on SIGTERM")
    add_flag(parser, "--log-format", choices=["json", "console"], default=d.log_format, help="log renderer")
    add_flag(parser, "--log-level", default=d.log_level, help="log level")

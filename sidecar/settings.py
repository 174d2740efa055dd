"""Sidecar flags (each also ``STEERGUARD_<FLAG>``) and the settings object built from them.

Parsed once at the entry point; everything below takes a :class:`SidecarSettings`.
This module imports only the standard library so ``steerguard --help`` stays fast.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from steerguard.errors import InvalidInput
from steerguard.settings import add_flag


def service_token(ns: argparse.Namespace) -> str | None:
    """The bearer token sent to the services: ``--auth-token``, or read once from ``--auth-token-file``."""
    token = ns.auth_token
    if ns.auth_token_file:
        try:
            token = Path(ns.auth_token_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise InvalidInput(f"cannot read --auth-token-file: {exc.strerror}") from None
    return token or None


@dataclass(frozen=True)
class AuditSettings:
    """Where audit events go (sidecar.audit): a Redis Stream, stdout, or nowhere (both unset)."""

    redis_url: str | None = None
    stream: str = "steerguard:audit"
    # XADD MAXLEN ~: about this many events kept (~0.4 GB of Redis at ~400 bytes each)
    maxlen: int = 1_000_000
    stdout: bool = False
    salt_file: str | None = None  # the HMAC key of the events' prompt hashes (a Secret)


# What the sidecar does when the classifier and the steer service serve different bundles.
BUNDLE_MISMATCH_MODES = ("warn", "refuse")


def add_sidecar_flags(parser: argparse.ArgumentParser) -> None:
    """Every flag of ``steerguard serve sidecar`` (names are relied on by the k8s manifests)."""
    add_flag(parser, "--host", default="0.0.0.0", help="address to listen on")
    add_flag(parser, "--port", type=int, default=8080, help="HTTP port (0 picks a free one)")
    add_flag(parser, "--upstream", default=None, help="base URL of the chatbot, e.g. http://bot:8000")
    add_flag(parser, "--classifier", default="127.0.0.1:50051", help="classifier service HOST:PORT")
    add_flag(parser, "--steer", default="127.0.0.1:50052", help="steer service HOST:PORT")
    add_flag(parser, "--policy", default=None, help="policy file (YAML or JSON); default: block all unsafe")
    add_flag(
        parser,
        "--policy-poll-s",
        type=float,
        default=SidecarSettings.policy_poll_s,
        help="read the policy file again when it changes, checked this often (0: only on SIGHUP)",
    )
    add_flag(parser, "--auth-token", default=None, help="bearer token sent to the services")
    add_flag(parser, "--auth-token-file", default=None, help="read the bearer token from this file")
    add_flag(parser, "--tls-ca", default=None, help="CA bundle (PEM): use TLS toward the services")
    add_flag(parser, "--tls-server-name", default=None, help="expected TLS name of the services")
    add_flag(parser, "--max-body-bytes", type=int, default=1024 * 1024, help="largest request body checked")
    add_flag(parser, "--classify-timeout-ms", type=int, default=2000, help="deadline of one classify call")
    add_flag(parser, "--steer-timeout-s", type=float, default=120.0, help="deadline of one steered answer")
    add_flag(
        parser, "--verdict-cache-size", type=int, default=10000, help="in-process verdicts kept (0: off)"
    )
    add_flag(
        parser, "--verdict-cache-ttl-s", type=float, default=30.0, help="how long a kept verdict is used"
    )
    add_flag(parser, "--grpc-retries", type=int, default=3, help="attempts per call on UNAVAILABLE (1-5)")
    add_flag(parser, "--grpc-keepalive-s", type=float, default=30.0, help="keep-alive ping interval")
    add_flag(parser, "--upstream-connect-timeout-s", type=float, default=5.0, help="connect to the chatbot")
    add_flag(parser, "--upstream-timeout-s", type=float, default=120.0, help="wait for the chatbot's headers")
    add_flag(parser, "--upstream-read-timeout-s", type=float, default=60.0, help="longest pause in a body")
    add_flag(parser, "--upstream-pool-size", type=int, default=512, help="keep-alive connections to the bot")
    add_flag(parser, "--client-timeout-s", type=float, default=30.0, help="time to receive a request body")
    add_flag(
        parser,
        "--idle-timeout-s",
        type=float,
        default=30.0,
        help="close a client connection idle this long, or still sending its headers",
    )
    add_flag(
        parser,
        "--bundle-mismatch",
        choices=BUNDLE_MISMATCH_MODES,
        default=SidecarSettings.bundle_mismatch,
        help="classifier and steer service on different bundles: warn, or refuse chat requests (503)",
    )
    add_flag(
        parser,
        "--bundle-check-s",
        type=float,
        default=SidecarSettings.bundle_check_s,
        help="how often the two services' bundles are compared",
    )
    audit = AuditSettings()
    add_flag(parser, "--audit-redis-url", default=None, help="write an audit event per request to this Redis")
    add_flag(parser, "--audit-stream", default=audit.stream, help="the Redis Stream audit events go to")
    add_flag(parser, "--audit-maxlen", type=int, default=audit.maxlen, help="about this many events kept")
    add_flag(
        parser, "--audit-stdout", action="store_true", help="write audit events to stdout (no Redis URL)"
    )
    add_flag(parser, "--audit-salt-file", default=None, help="secret key of the audit events' prompt hashes")
    add_flag(
        parser,
        "--metrics-port",
        type=int,
        default=SidecarSettings.metrics_port,
        help="serve /metrics on this port of its own, never on the public one (0: a free port)",
    )
    add_flag(parser, "--grace-seconds", type=float, default=10.0, help="drain time on SIGTERM")
    add_flag(parser, "--log-format", choices=["json", "console"], default="json", help="log renderer")
    add_flag(parser, "--log-level", default="info", help="log level")


@dataclass(frozen=True)
class SidecarSettings:
    """Everything the proxy needs from its flags."""

    upstream: str
    classifier: str = "127.0.0.1:50051"
    steer: str = "127.0.0.1:50052"
    host: str = "127.0.0.1"
    port: int = 8080
    policy_file: str | None = None
    policy_poll_s: float = 2.0  # sidecar.reload
    audit: AuditSettings = AuditSettings()
    bundle_mismatch: str = "warn"  # sidecar.bundles
    bundle_check_s: float = 30.0
    auth_token: str | None = None
    tls_ca: str | None = None
    tls_server_name: str | None = None
    max_body_bytes: int = 1024 * 1024
    classify_timeout_s: float = 2.0
    steer_timeout_s: float = 120.0
    verdict_cache_size: int = 10000
    verdict_cache_ttl_s: float = 30.0
    grpc_retries: int = 3
    grpc_keepalive_s: float = 30.0
    upstream_connect_timeout_s: float = 5.0
    upstream_timeout_s: float = 120.0
    upstream_read_timeout_s: float = 60.0
    upstream_pool_size: int = 512
    client_timeout_s: float = 30.0
    idle_timeout_s: float = 30.0
    # /metrics on a listener of its own; None: none (in-process embedding, tests that do not read it)
    metrics_port: int | None = 9102
    grace_s: float = 10.0
    log_format: str = "json"
    log_level: str = "info"

    def __post_init__(self) -> None:
        parts = urlsplit(self.upstream)
        if parts.scheme not in {"http", "https"} or not parts.netloc:
            raise InvalidInput("--upstream must be an http(s) URL such as http://127.0.0.1:8000")
        if self.max_body_bytes < 1:
            raise InvalidInput("--max-body-bytes must be positive")
        if not 1 <= self.grpc_retries <= 5:
            raise InvalidInput("--grpc-retries must be between 1 and 5")

    @classmethod
    def from_args(cls, ns: argparse.Namespace) -> SidecarSettings:
        """Build settings from parsed flags (reads the token file here, once)."""
        if not ns.upstream:
            raise InvalidInput("--upstream is required (or STEERGUARD_UPSTREAM)")
        token = service_token(ns)
        return cls(
            upstream=ns.upstream,
            classifier=ns.classifier,
            steer=ns.steer,
            host=ns.host,
            port=ns.port,
            policy_file=ns.policy,
            policy_poll_s=ns.policy_poll_s,
            bundle_mismatch=ns.bundle_mismatch,
            bundle_check_s=ns.bundle_check_s,
            audit=AuditSettings(
                redis_url=ns.audit_redis_url,
                stream=ns.audit_stream,
                maxlen=ns.audit_maxlen,
                stdout=ns.audit_stdout,
                salt_file=ns.audit_salt_file,
            ),
            auth_token=token or None,
            tls_ca=ns.tls_ca,
            tls_server_name=ns.tls_server_name,
            max_body_bytes=ns.max_body_bytes,
            classify_timeout_s=ns.classify_timeout_ms / 1000.0,
            steer_timeout_s=ns.steer_timeout_s,
            verdict_cache_size=ns.verdict_cache_size,
            verdict_cache_ttl_s=ns.verdict_cache_ttl_s,
            grpc_retries=ns.grpc_retries,
            grpc_keepalive_s=ns.grpc_keepalive_s,
            upstream_connect_timeout_s=ns.upstream_connect_timeout_s,
            upstream_timeout_s=ns.upstream_timeout_s,
            upstream_read_timeout_s=ns.upstream_read_timeout_s,
            upstream_pool_size=ns.upstream_pool_size,
            client_timeout_s=ns.client_timeout_s,
            idle_timeout_s=ns.idle_timeout_s,
            metrics_port=ns.metrics_port,
            grace_s=ns.grace_seconds,
            log_format=ns.log_format,
            log_level=ns.log_level,
        )

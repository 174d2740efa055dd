"""Client channels toward steerguard services.

``dns:///name:port`` with the ``round_robin`` policy spreads RPCs over every
address a name resolves to: with a Kubernetes headless Service that is every
pod, which kube-proxy cannot do for long-lived HTTP/2 connections. Retries are
for ``UNAVAILABLE`` only (safe: classification and generation have no side
effects the client could see twice).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import grpc


def _service_config(service_names: list[str], attempts: int) -> str:
    """Round-robin, and retries on UNAVAILABLE when ``attempts`` > 1 (gRPC allows 2 to 5)."""
    config: dict[str, Any] = {"loadBalancingConfig": [{"round_robin": {}}]}
    if attempts > 1:
        config["methodConfig"] = [
            {
                "name": [{"service": s} for s in service_names],
                "retryPolicy": {
                    "maxAttempts": min(attempts, 5),
                    "initialBackoff": "0.05s",
                    "maxBackoff": "0.5s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
    return json.dumps(config)


def target_for(address: str) -> str:
    """``host:port`` → ``dns:///host:port`` so every resolved address is used."""
    if "://" in address or address.startswith(("dns:", "unix:", "ipv4:", "ipv6:")):
        return address
    return f"dns:///{address}"


def make_channel(
    address: str,
    *,
    service_names: list[str],
    tls_ca: str | None = None,
    tls_cert: str | None = None,
    tls_key: str | None = None,
    attempts: int = 3,
    max_message_bytes: int = 4 * 1024 * 1024,
    aio: bool = False,
) -> Any:
    """A channel (``grpc.aio`` with ``aio``): TLS with ``tls_ca``, mTLS with the client's cert and key too."""
    options = [
        ("grpc.service_config", _service_config(service_names, attempts)),
        ("grpc.enable_retries", 1),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
    ]
    target = target_for(address)
    module: Any = grpc.aio if aio else grpc
    if tls_ca:
        creds = grpc.ssl_channel_credentials(
            root_certificates=Path(tls_ca).read_bytes(),
            private_key=Path(tls_key).read_bytes() if tls_key else None,
            certificate_chain=Path(tls_cert).read_bytes() if tls_cert else None,
        )
        return module.secure_channel(target, creds, options=options)
    return module.insecure_channel(target, options=options)


def bearer_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),) if token else ()

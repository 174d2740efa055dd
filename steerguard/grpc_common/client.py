"""Client channels toward steerguard services.

``dns:///name:port`` with the ``round_robin`` policy spreads RPCs over every
address a name resolves to: with a Kubernetes headless Service that is every
pod, which kube-proxy cannot do for long-lived HTTP/2 connections. Retries are
for ``UNAVAILABLE`` only (safe: classification and generation have no side
effects the client could see twice).
"""

from __future__ import annotations

import json

import grpc


def _service_config(service_names: list[str], attempts: int) -> str:
    config = {
        "loadBalancingConfig": [{"round_robin": {}}],
        "methodConfig": [
            {
                "name": [{"service": s} for s in service_names],
                "retryPolicy": {
                    "maxAttempts": attempts,
                    "initialBackoff": "0.05s",
                    "maxBackoff": "0.5s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ],
    }
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
    attempts: int = 3,
    max_message_bytes: int = 4 * 1024 * 1024,
) -> grpc.Channel:
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
    if tls_ca:
        with open(tls_ca, "rb") as fh:
            creds = grpc.ssl_channel_credentials(root_certificates=fh.read())
        return grpc.secure_channel(target, creds, options=options)
    return grpc.insecure_channel(target, options=options)


def bearer_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),) if token else ()

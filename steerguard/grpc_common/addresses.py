"""Addresses as gRPC and people write them (imports nothing, for the light tools that need it)."""

from __future__ import annotations


def host_port(host: str, port: int) -> str:
    """``host:port`` with IPv6 hosts bracketed."""
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"

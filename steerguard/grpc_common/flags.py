"""Flags every gRPC service takes (each also settable as ``STEERGUARD_<FLAG>``)."""

from __future__ import annotations

import argparse

from steerguard.settings import add_flag

# The longest prompt a service accepts, in tokens (both services' configs default to it).
MAX_PROMPT_TOKENS = 1024


def add_common_service_flags(parser: argparse.ArgumentParser, *, default_port: int) -> None:
    """Listening address, model/bundle, security, logging and shutdown flags."""
    add_flag(parser, "--host", default="0.0.0.0", help="address to listen on")
    add_flag(parser, "--port", type=int, default=default_port, help="gRPC port (0 picks a free one)")
    add_flag(parser, "--metrics-port", type=int, default=0, help="Prometheus /metrics HTTP port (0: off)")
    add_flag(parser, "--bundle", default=None, help="calibration bundle directory (default: the shipped one)")
    add_flag(
        parser,
        "--bundle-poll-s",
        type=float,
        default=10.0,
        help="serve a changed --bundle directory without a restart, checked this often (0: only on SIGHUP)",
    )
    add_flag(parser, "--model", default=None, help="local Hugging Face model directory (default: SmolLM2)")
    add_flag(
        parser, "--max-prompt-tokens", type=int, default=MAX_PROMPT_TOKENS, help="longest prompt accepted"
    )
    add_flag(parser, "--max-message-bytes", type=int, default=4 * 1024 * 1024, help="gRPC message limit")
    add_flag(parser, "--auth-token", default=None, help="require 'authorization: Bearer <token>'")
    add_flag(parser, "--auth-token-file", default=None, help="read the bearer token from this file")
    add_flag(parser, "--tls-cert", default=None, help="server certificate (PEM) to enable TLS")
    add_flag(parser, "--tls-key", default=None, help="server private key (PEM)")
    add_flag(parser, "--tls-client-ca", default=None, help="CA bundle: require client certificates (mTLS)")
    add_flag(parser, "--grace-seconds", type=float, default=10.0, help="drain time on SIGTERM")
    add_flag(parser, "--threads", type=int, default=0, help="torch intra-op threads (0: torch default)")
    add_flag(parser, "--log-format", choices=["json", "console"], default="json", help="log renderer")
    add_flag(parser, "--log-level", default="info", help="log level")
    add_flag(parser, "--log-prompts", action="store_true", default=False, help="log raw prompts (debug only)")

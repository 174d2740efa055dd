"""Prometheus exposition on its own HTTP port (scraped separately from gRPC traffic)."""

from __future__ import annotations

from prometheus_client import start_http_server

from steerguard.logs import get_logger

log = get_logger("steerguard.metrics")


def start_metrics_server(port: int, addr: str = "0.0.0.0") -> None:
    """Serve ``/metrics`` on ``port``; 0 disables it."""
    if port <= 0:
        return
    start_http_server(port, addr=addr)
    log.info("metrics listening", port=port)

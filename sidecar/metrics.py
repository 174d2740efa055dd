"""Prometheus metrics of one sidecar (own registry, so tests can run several apps).

``added_latency`` is the time the sidecar itself adds to a forwarded request:
from receiving it to handing it to the upstream (body read, parse, classify).
Requests the sidecar answers itself are measured whole in ``request_duration``.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_FAST = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_SLOW = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class Metrics:
    """All sidecar series."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self._operations(r)
        self.requests = Counter(
            "steerguard_sidecar_requests",
            "HTTP requests by route kind and status",
            ["route", "status"],
            registry=r,
        )
        self.added_latency = Histogram(
            "steerguard_sidecar_added_latency_seconds",
            "time the sidecar adds before forwarding to the upstream",
            ["route"],
            buckets=_FAST,
            registry=r,
        )
        self.request_duration = Histogram(
            "steerguard_sidecar_request_duration_seconds",
            "whole request time until the response headers are sent, by action",
            ["route", "action"],
            buckets=_SLOW,
            registry=r,
        )
        self.classify_latency = Histogram(
            "steerguard_sidecar_classify_seconds",
            "classifier call time (including retries)",
            ["stage"],
            buckets=_FAST,
            registry=r,
        )
        self.verdicts = Counter(
            "steerguard_sidecar_verdicts", "classifier verdicts", ["stage", "verdict", "category"], registry=r
        )
        # The cut each request was judged at (sidecar.decisions.threshold_for): a policy has few
        # distinct cuts (per category, per route, its own, the bundle's), so the label stays small.
        self.thresholds = Counter(
            "steerguard_sidecar_thresholds",
            "requests judged, by route and the threshold in force",
            ["route", "threshold"],
            registry=r,
        )
        self.local_cache_hits = Counter(
            "steerguard_sidecar_local_cache_hits",
            "verdicts reused from the sidecar's short-lived in-process cache",
            ["stage"],
            registry=r,
        )
        self.actions = Counter(
            "steerguard_sidecar_actions",
            "actions taken (shadow=true: only recorded)",
            ["action", "shadow"],
            registry=r,
        )
        self.failures = Counter(
            "steerguard_sidecar_failures",
            "failures by dependency and kind",
            ["dependency", "kind"],
            registry=r,
        )
        self.bad_requests = Counter(
            "steerguard_sidecar_bad_requests", "requests refused as malformed", ["status"], registry=r
        )
        self.uncalibrated_languages = Counter(
            "steerguard_sidecar_uncalibrated_languages",
            "requests in a language the bundle was not calibrated for, by language and on_language",
            ["language", "policy"],
            registry=r,
        )
        self.degraded = Gauge(
            "steerguard_sidecar_degraded",
            "1 while the classifier is unreachable and fail-open routes forward unjudged traffic",
            registry=r,
        )

    def _operations(self, r: CollectorRegistry) -> None:
        """Series of the sidecar's own operation: reloads, the audit trail, bundle consistency."""
        self.config_reloads = Counter(
            "steerguard_config_reloads",
            "policy file reloads: ok (in force) or invalid (the old policy kept)",
            ["result"],
            registry=r,
        )
        self.audit_events = Counter(
            "steerguard_sidecar_audit_events",
            "audit events: written, failed (Redis refused them) or dropped (queue full)",
            ["result"],
            registry=r,
        )
        self.overlap = Counter(
            "steerguard_sidecar_overlap",
            "requests sent upstream before their verdict (overlap mode): relayed or cancelled",
            ["result"],
            registry=r,
        )
        self.bundle_mismatch = Gauge(
            "steerguard_sidecar_bundle_mismatch",
            "1 while the classifier and the steer service serve different bundles (sidecar.bundles)",
            registry=r,
        )

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)

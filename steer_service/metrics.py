"""Prometheus metrics of the steer service (module-level: one registry per process).

Throughput is ``rate(steerguard_steer_generated_tokens_total)``; per-request
decode speed and time to first token are histograms; batch occupancy is
sampled at every decode step; steering is counted by mode and by the vector
actually applied (``none``, ``refusal``, ``-refusal``, ``category:<name>``),
which for AUTO/SCANS is only known after the prompt pass.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

PREFIX = "steerguard_steer_"

REQUESTS = Counter(PREFIX + "requests_total", "Requests admitted to the engine", ["mode", "vector"])
FINISHED = Counter(PREFIX + "finished_total", "Requests finished, by reason", ["reason"])
REJECTED = Counter(PREFIX + "rejected_total", "Requests refused before generation", ["reason"])
TOKENS = Counter(PREFIX + "generated_tokens_total", "Tokens generated")
TTFT = Histogram(
    PREFIX + "time_to_first_token_seconds",
    "Submit to first token",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
TOKENS_PER_SECOND = Histogram(
    PREFIX + "tokens_per_second",
    "Per-request decode speed after the first token",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000),
)
STEP_SECONDS = Histogram(
    PREFIX + "decode_step_seconds",
    "One decode step of the whole batch",
    buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1),
)
BATCH_ROWS = Gauge(PREFIX + "batch_rows", "Rows in the running batch")
BATCH_OCCUPANCY = Histogram(
    PREFIX + "batch_occupancy_ratio",
    "Rows / max batch size, per decode step",
    buckets=(0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0),
)
QUEUE_DEPTH = Gauge(PREFIX + "queue_depth", "Requests waiting for a batch row")

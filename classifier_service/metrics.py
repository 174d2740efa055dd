"""Prometheus metrics of the classifier (served on ``--metrics-port``).

Defined once at import on the default registry, so several servers in one
process (tests) share them instead of failing on duplicate registration.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

REQUEST_SECONDS = Histogram(
    "steerguard_classifier_request_seconds",
    "Latency of Classifier RPCs by method and status code",
    ["method", "code"],
    buckets=LATENCY_BUCKETS,
)
BATCH_SIZE = Histogram(
    "steerguard_classifier_batch_size",
    "Requests per forward pass (micro-batching)",
    buckets=(1, 2, 4, 8, 12, 16, 24, 32, 48, 64),
)
FORWARD_SECONDS = Histogram(
    "steerguard_classifier_forward_seconds",
    "Time of one batched forward pass up to the probe layer",
    buckets=LATENCY_BUCKETS,
)
OPEN_STREAMS = Gauge("steerguard_classifier_open_streams", "ClassifyStream calls open now")
SCHEDULE = Gauge(
    "steerguard_classifier_schedule",
    "How the batcher fills a step, chosen at start-up (classifier_service.schedule): 1 for the one in use",
    ["schedule"],
)
QUEUE_DEPTH = Gauge("steerguard_classifier_queue_depth", "Requests waiting for a forward pass")
CACHE_HITS = Counter("steerguard_classifier_cache_hits_total", "Verdicts answered from the cache")
CACHE_MISSES = Counter("steerguard_classifier_cache_misses_total", "Verdicts not in the cache")
CACHE_ERRORS = Counter(
    "steerguard_classifier_cache_errors_total",
    "Cache backend failures (the request was answered uncached)",
    ["backend", "op"],
)
SINGLE_FLIGHT_JOINS = Counter(
    "steerguard_classifier_singleflight_joins_total",
    "Cache misses that waited for an identical request already being computed",
)
VERDICTS = Counter(
    "steerguard_classifier_verdicts_total",
    "Verdicts returned, by category ('safe' for safe prompts)",
    ["category"],
)
CATEGORY_UNSURE = Counter(
    "steerguard_classifier_category_unsure_total",
    "Unsafe verdicts whose category the bundle's head is unsure of (category_unsure), by likeliest category",
    ["category"],
)
DROPPED_JOBS = Counter(
    "steerguard_classifier_dropped_jobs_total",
    "Long prompts stopped between chunks because nobody waited for their verdict any more",
)
SHED_CALLS = Counter(
    "steerguard_classifier_shed_total",
    "Calls refused at once (RESOURCE_EXHAUSTED) because their estimated wait was too long",
)
CASCADE_EXITS = Counter(
    "steerguard_classifier_cascade_exits_total",
    "Prompt views judged safe by the bundle's early-exit probe, before the probe layer",
)

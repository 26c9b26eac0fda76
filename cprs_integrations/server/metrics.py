"""Prometheus metrics of a cprs server (``GET /metrics``), in a registry of the app's own."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


class Metrics:
    """The server's counters, gauges and histograms; :meth:`render` is the ``/metrics`` body."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.queue_depth = Gauge("cprs_queue_depth", "requests waiting to be computed", registry=self.registry)
        self.in_flight = Gauge("cprs_in_flight", "requests whose windows are being scored", registry=self.registry)
        self.windows = Counter("cprs_windows_scored", "context windows scored", registry=self.registry)
        self.tokens = Counter("cprs_context_tokens", "context tokens of answered requests", registry=self.registry)
        self.forward_batches = Counter("cprs_forward_batches", "critic calls (forward batches)", registry=self.registry)
        self.requests = Counter(
            "cprs_http_requests", "HTTP requests answered", ["endpoint", "status"], registry=self.registry
        )
        self.errors = Counter("cprs_errors", "error answers by error type", ["kind"], registry=self.registry)
        self.cancelled = Counter(
            "cprs_cancelled_requests", "compressions stopped early", ["reason"], registry=self.registry
        )
        self.latency = Histogram(
            "cprs_request_seconds", "HTTP request latency", ["endpoint"], buckets=LATENCY_BUCKETS, registry=self.registry
        )
        self.queue_wait = Histogram(
            "cprs_queue_wait_seconds", "time from arrival to the first scored window", buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.compute = Histogram(
            "cprs_compute_seconds", "time from the first scored window to the answer", buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)

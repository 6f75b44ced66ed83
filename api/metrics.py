"""``GET /metrics``, and the API's own request counts, latencies and request log.

A scrape asks the broker once (``Op.METRICS``) and renders its answer through
``api.collector.BrokerCollector``, together with the API's own metrics: requests by
method, route template and status, and their latencies. Under gunicorn those are kept in
files shared by its processes (``PROMETHEUS_MULTIPROC_DIR``, which
``api.serve.prepare_metrics`` sets up in the master before it forks), so any process's
scrape shows every process's requests; without it, in one process, in memory.

Every request is also logged, one line each: method, route template, status and
duration, never the path's ids, the query, a token or a body. Labels are bounded: the
route is the template a request was routed to (``-`` for one refused before routing or
routed nowhere), the method one of ``METHODS`` or ``other``.

``prometheus_client`` is imported only when the first request comes, in a gunicorn
worker after the fork: it decides at its import where values are kept.
"""

from __future__ import annotations

import logging
import os
import time
from typing import TYPE_CHECKING, Any

import falcon

from common.errors import Unavailable
from common.ops import Op

if TYPE_CHECKING:
    from prometheus_client import Counter, Histogram

    from api.app import ClientFactory

log = logging.getLogger("api.requests")

#: The environment variable that puts ``prometheus_client`` in multiprocess mode.
MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"
#: Seconds a scrape waits for the broker before answering without its figures.
SCRAPE_TIMEOUT = 2.0
#: Methods counted under their own label; any other under ``other``.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})
#: The route label of a request refused before routing (a 401) or routed nowhere (a 404).
NO_ROUTE = "-"
#: Upper bounds in seconds of the request latency buckets (a long-poll holds up to 30 s).
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                   10.0, 30.0, 60.0)  # fmt: skip


class RequestMetrics:
    """Falcon middleware, first of all: counts, times and logs every request, those the
    authorization middleware refuses included."""

    def __init__(self) -> None:
        self._requests: Counter | None = None
        self._latency: Histogram | None = None

    def metrics(self) -> tuple[Counter, Histogram]:
        """The request counter and latency histogram, made at the first use (after the
        fork), and registered nowhere: ``/metrics`` collects them itself."""
        if self._requests is None or self._latency is None:
            from prometheus_client import Counter, Histogram

            self._requests = Counter(
                "zmqs_api_requests",
                "HTTP requests answered, by method, route template and status.",
                ["method", "route", "status"],
                registry=None,
            )
            self._latency = Histogram(
                "zmqs_api_request_seconds",
                "Seconds from a request's arrival at the app to its answer.",
                ["method", "route"],
                registry=None,
                buckets=LATENCY_BUCKETS,
            )
        return self._requests, self._latency

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        req.context.started = time.perf_counter()

    def process_response(
        self, req: falcon.Request, resp: falcon.Response, resource: object, succeeded: bool
    ) -> None:
        started = req.context.get("started")
        elapsed = time.perf_counter() - started if started is not None else 0.0
        method = req.method if req.method in METHODS else "other"
        route = req.uri_template or NO_ROUTE
        status = resp.status_code
        requests, latency = self.metrics()
        requests.labels(method, route, str(status)).inc()
        latency.labels(method, route).observe(elapsed)
        log.info(
            "%s %s %d %.1f ms", method, route, status, elapsed * 1000,
            extra={"method": method, "route": route, "status": status,
                   "duration_ms": round(elapsed * 1000, 3)},
        )  # fmt: skip


class MetricsPage:
    """``/metrics``: the broker's figures (asked once) and the API's, in Prometheus' text
    format. A broker that does not answer makes ``zmqs_broker_up 0``, not an error: the
    API's own figures are still worth scraping."""

    def __init__(self, client: ClientFactory, requests: RequestMetrics) -> None:
        self.client = client
        self.requests = requests

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

        from api.collector import BrokerCollector

        value: dict[str, Any] | None
        try:
            value = self.client().request(Op.METRICS, {}, timeout=SCRAPE_TIMEOUT)
        except Unavailable:
            value = None
        registry = CollectorRegistry(auto_describe=False)
        registry.register(BrokerCollector(value))
        directory = os.environ.get(MULTIPROC_DIR)
        if directory:
            from prometheus_client.multiprocess import MultiProcessCollector

            MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
        else:
            for metric in self.requests.metrics():
                registry.register(metric)
        resp.content_type = CONTENT_TYPE_LATEST
        resp.data = generate_latest(registry)

    on_head = on_get

"""Request metrics of the ranking service (``GET /metrics``, Prometheus text format) and the plain ASGI
middleware at its edge that records them, answers 413 for a body over the limit and 408 for a body
that does not arrive in time.

Counters: requests and errors by route and status, ranked and explored requests, the /v1/rank latency
histogram (``LATENCY_BUCKETS``, seconds), the served policy's version, and the durable log's group
commits and writes. Every counter is per process: with several uvicorn workers, each one answers for
itself.

Labels come from a closed set: a request's ``path`` label is its route (``ROUTES``) or ``other``, never
the path the client sent, so no client can add series or plant lines; the text is rendered (and every
label value escaped) by the Prometheus client library (``prometheus_client``).

A client that goes away mid-request (it disconnects before its body arrived) is logged as one line
and counted with status 499 (nginx's "client closed request"), not as a 500 with a traceback.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time

from fastapi.responses import JSONResponse
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from starlette.requests import ClientDisconnect

from rlmtf.serve.store import ServeStore

__all__ = ["CLIENT_CLOSED", "LATENCY_BUCKETS", "ROUTES", "EdgeMiddleware", "Metrics"]

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
#: the ``path`` label values besides ``other``: the service's routes
ROUTES = frozenset({"/v1/rank", "/v1/feedback", "/v1/schema", "/healthz", "/metrics", "/v1/admin/reload",
                    "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"})
#: the status a request whose client disconnected is counted with (nothing was sent)
CLIENT_CLOSED = 499

log = logging.getLogger("rlmtf.serve")


class Metrics:
    """Counters and the /v1/rank latency histogram of one process, rendered in the Prometheus text format."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: dict[tuple[str, int], int] = {}
        self.errors: dict[str, int] = {}
        self.explored = 0
        self.ranked = 0
        self.buckets = [0] * len(LATENCY_BUCKETS)
        self.lat_sum = 0.0
        self.lat_count = 0

    def observe(self, path: str, status: int, seconds: float) -> None:
        route = path if path in ROUTES else "other"
        with self.lock:
            self.requests[(route, status)] = self.requests.get((route, status), 0) + 1
            if status >= 400:
                self.errors[route] = self.errors.get(route, 0) + 1
            if route == "/v1/rank":
                self.lat_sum += seconds
                self.lat_count += 1
                for i, b in enumerate(LATENCY_BUCKETS):
                    if seconds <= b:
                        self.buckets[i] += 1

    def render(self, version: str, store: ServeStore | None = None) -> str:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Snapshot(self, version, store))
        return generate_latest(registry).decode()


class _Snapshot:
    """A prometheus_client collector over one :class:`Metrics` (read under its lock)."""

    def __init__(self, m: Metrics, version: str, store: ServeStore | None):
        self.m, self.version, self.store = m, version, store

    def collect(self):
        m = self.m
        with m.lock:
            req = CounterMetricFamily("rlmtf_requests", "HTTP requests by route and status.", labels=["path", "status"])
            for (p, s), n in sorted(m.requests.items()):
                req.add_metric([p, str(s)], n)
            err = CounterMetricFamily("rlmtf_errors", "HTTP responses with status >= 400, by route.", labels=["path"])
            for p, n in sorted(m.errors.items()):
                err.add_metric([p], n)
            ranked = CounterMetricFamily("rlmtf_ranked", "Ranking requests served.", value=m.ranked)
            explored = CounterMetricFamily("rlmtf_explored", "Ranking requests served with exploration.",
                                           value=m.explored)
            hist = HistogramMetricFamily(
                "rlmtf_rank_latency_seconds", "Latency of /v1/rank.",
                buckets=[*((str(b), n) for b, n in zip(LATENCY_BUCKETS, m.buckets, strict=True)),
                         ("+Inf", m.lat_count)], sum_value=m.lat_sum)
        yield from (req, err, ranked, explored, hist)
        info = GaugeMetricFamily("rlmtf_model_info", "The policy being served.", labels=["version"])
        info.add_metric([self.version], 1)
        yield info
        if self.store is not None:
            yield CounterMetricFamily("rlmtf_log_commits", "Group commits of the durable log (this process).",
                                      value=self.store.groups)
            yield CounterMetricFamily("rlmtf_log_writes", "Records committed to the durable log (this process).",
                                      value=self.store.writes)


class EdgeMiddleware:
    """Plain ASGI middleware: request metrics (route, status, latency), 413 for a body over ``limit`` bytes
    (by Content-Length or as it streams in), 408 for a body not received within ``body_timeout_s`` of the
    request's start, and one log line (no traceback, no 500) for a client that disconnects."""

    class _TooLarge(Exception):
        """Raised from ``receive`` when a streamed body passes the limit."""

    class _TooSlow(Exception):
        """Raised from ``receive`` when the body has not arrived in time."""

    def __init__(self, app, limit: int, metrics: Metrics, body_timeout_s: float = 30.0):
        self.app, self.limit, self.metrics, self.body_timeout_s = app, limit, metrics, body_timeout_s

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        deadline = time.monotonic() + self.body_timeout_s
        status = 500
        seen = 0
        started = False

        async def limited_receive():
            nonlocal seen
            try:
                msg = await asyncio.wait_for(receive(), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                raise self._TooSlow from None
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.limit:
                    raise self._TooLarge
            return msg

        async def tracking_send(msg):
            nonlocal started, status
            if msg["type"] == "http.response.start":
                started, status = True, msg["status"]
            await send(msg)

        async def refuse(code: int, text: str) -> None:
            nonlocal status
            if not started:
                status = code
                await JSONResponse({"detail": text}, status_code=code, headers={"Connection": "close"})(
                    scope, receive, send)

        try:
            for k, v in scope.get("headers", []):
                if k == b"content-length" and v.isdigit() and int(v) > self.limit:
                    return await refuse(413, f"request body over {self.limit} bytes")
            try:
                await self.app(scope, limited_receive, tracking_send)
            except self._TooLarge:
                await refuse(413, f"request body over {self.limit} bytes")
            except self._TooSlow:
                await refuse(408, f"request body not received within {self.body_timeout_s:g} s")
            except ClientDisconnect:
                status = CLIENT_CLOSED
                client = scope.get("client") or ("?", 0)
                log.warning("client %s:%s disconnected before its %s %s was read", client[0], client[1],
                         scope.get("method", "?"), scope["path"] if scope["path"] in ROUTES else "(other path)")
        finally:
            self.metrics.observe(scope["path"], status, time.perf_counter() - t0)

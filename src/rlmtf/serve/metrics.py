"""Request metrics of the ranking service (``GET /metrics``, Prometheus text format) and the plain ASGI
middleware at its edge that records them and answers 413 for a body over the limit.

Counters: requests and errors by path and status, ranked and explored requests, the /v1/rank latency
histogram (``LATENCY_BUCKETS``, seconds), the served policy's version, and the durable log's group
commits and writes. Every counter is per process: with several uvicorn workers, each one answers for
itself.
"""

from __future__ import annotations

import threading
import time

from fastapi.responses import PlainTextResponse

from rlmtf.serve.store import ServeStore

__all__ = ["LATENCY_BUCKETS", "EdgeMiddleware", "Metrics"]

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


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
        with self.lock:
            self.requests[(path, status)] = self.requests.get((path, status), 0) + 1
            if status >= 400:
                self.errors[path] = self.errors.get(path, 0) + 1
            if path == "/v1/rank":
                self.lat_sum += seconds
                self.lat_count += 1
                for i, b in enumerate(LATENCY_BUCKETS):
                    if seconds <= b:
                        self.buckets[i] += 1

    def render(self, version: str, store: ServeStore | None = None) -> str:
        with self.lock:
            lines = ["# HELP rlmtf_requests_total HTTP requests by path and status.",
                     "# TYPE rlmtf_requests_total counter"]
            lines += [f'rlmtf_requests_total{{path="{p}",status="{s}"}} {n}'
                      for (p, s), n in sorted(self.requests.items())]
            lines += ["# HELP rlmtf_errors_total HTTP responses with status >= 400, by path.",
                      "# TYPE rlmtf_errors_total counter"]
            lines += [f'rlmtf_errors_total{{path="{p}"}} {n}' for p, n in sorted(self.errors.items())]
            lines += ["# HELP rlmtf_ranked_total Ranking requests served.", "# TYPE rlmtf_ranked_total counter",
                      f"rlmtf_ranked_total {self.ranked}",
                      "# HELP rlmtf_explored_total Ranking requests served with exploration.",
                      "# TYPE rlmtf_explored_total counter", f"rlmtf_explored_total {self.explored}",
                      "# HELP rlmtf_rank_latency_seconds Latency of /v1/rank.",
                      "# TYPE rlmtf_rank_latency_seconds histogram"]
            lines += [f'rlmtf_rank_latency_seconds_bucket{{le="{b}"}} {n}'
                      for b, n in zip(LATENCY_BUCKETS, self.buckets, strict=True)]
            lines += [f'rlmtf_rank_latency_seconds_bucket{{le="+Inf"}} {self.lat_count}',
                      f"rlmtf_rank_latency_seconds_sum {self.lat_sum:.6f}",
                      f"rlmtf_rank_latency_seconds_count {self.lat_count}",
                      "# HELP rlmtf_model_info The policy being served.", "# TYPE rlmtf_model_info gauge",
                      f'rlmtf_model_info{{version="{version}"}} 1']
        if store is not None:
            lines += ["# HELP rlmtf_log_commits_total Group commits of the durable log (this process).",
                      "# TYPE rlmtf_log_commits_total counter", f"rlmtf_log_commits_total {store.groups}",
                      "# HELP rlmtf_log_writes_total Records committed to the durable log (this process).",
                      "# TYPE rlmtf_log_writes_total counter", f"rlmtf_log_writes_total {store.writes}"]
        return "\n".join(lines) + "\n"


class EdgeMiddleware:
    """Plain ASGI middleware: request metrics (path, status, latency) and 413 for a body over ``limit``
    bytes (by Content-Length or as it streams in)."""

    class _TooLarge(Exception):
        """Raised from ``receive`` when a streamed body passes the limit."""

    def __init__(self, app, limit: int, metrics: Metrics):
        self.app, self.limit, self.metrics = app, limit, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        status = 500
        too_large = PlainTextResponse(f"request body over {self.limit} bytes", status_code=413)
        seen = 0
        started = False

        async def limited_receive():
            nonlocal seen
            msg = await receive()
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

        try:
            for k, v in scope.get("headers", []):
                if k == b"content-length" and v.isdigit() and int(v) > self.limit:
                    status = 413
                    return await too_large(scope, receive, send)
            try:
                await self.app(scope, limited_receive, tracking_send)
            except self._TooLarge:
                if not started:
                    status = 413
                    await too_large(scope, receive, send)
        finally:
            self.metrics.observe(scope["path"], status, time.perf_counter() - t0)

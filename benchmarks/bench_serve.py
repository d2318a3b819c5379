"""HTTP latency of the ranking service on loopback: `rlmtf serve --workers 2`, an open-loop load of
R requests/s for S seconds (p50/p99), then a closed loop of C concurrent clients (requests/s at
saturation), for 100 and 500 candidates. The load generator shares the machine's 2 cores with the
server, so saturation figures are a lower bound.

    python benchmarks/bench_serve.py [--rate 100] [--seconds 10] [--policy baseline|DIR] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def body(schema: dict, n: int, rng: np.random.Generator, i: int) -> dict:
    def feats(group: dict) -> dict:
        return {k: (float(rng.random()) if d == 1 else rng.random(d).round(3).tolist()) for k, d in group.items()}

    return {"user_id": f"u{i % 997}", "session_id": f"s{i % 997}", "k": 5,
            "user_features": feats(schema["user_features"]), "context": feats(schema["context"]),
            "candidates": [{"item_id": f"i{j}", "item_features": feats(schema["item_features"]),
                            "mtl_scores": {t: float(rng.random()) for t in schema["mtl_tasks"]}} for j in range(n)]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=float, default=100.0)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--candidates", type=int, nargs="+", default=[100, 500])
    ap.add_argument("--policy", default="baseline")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as log_dir:
        proc = subprocess.Popen([sys.executable, "-m", "rlmtf.cli", "serve", "--log-dir", log_dir, "--port", str(port),
                                 "--workers", str(a.workers), "--policy", a.policy], stderr=subprocess.DEVNULL)
        try:
            for _ in range(300):
                try:
                    if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.2)
            schema = httpx.get(f"{url}/v1/schema").json()
            rows = []
            rng = np.random.default_rng(0)
            for n in a.candidates:
                payloads = [json.dumps(body(schema, n, rng, i)) for i in range(64)]
                lat: list[float] = []
                errors = [0]
                lock = threading.Lock()
                client = httpx.Client(timeout=10, limits=httpx.Limits(max_connections=64))

                def one(i: int, client=client, payloads=payloads, lat=lat, errors=errors, lock=lock) -> None:
                    t = time.perf_counter()
                    r = client.post(f"{url}/v1/rank", content=payloads[i % len(payloads)],
                                    headers={"content-type": "application/json"})
                    dt = time.perf_counter() - t
                    with lock:
                        lat.append(dt)
                        errors[0] += r.status_code != 200

                for i in range(10):  # warm-up
                    one(i)
                lat.clear()
                with ThreadPoolExecutor(32) as pool:  # open loop: send at a fixed rate
                    t0 = time.perf_counter()
                    total = int(a.rate * a.seconds)
                    for i in range(total):
                        delay = t0 + i / a.rate - time.perf_counter()
                        if delay > 0:
                            time.sleep(delay)
                        pool.submit(one, i)
                ms = np.array(lat) * 1000
                open_loop = {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
                             "errors": errors[0], "requests": len(lat)}
                done = [0]
                stop_at = time.perf_counter() + a.seconds

                def closed(c: int, client=client, payloads=payloads, done=done, lock=lock,
                           stop_at=stop_at) -> None:
                    i = c
                    while time.perf_counter() < stop_at:
                        client.post(f"{url}/v1/rank", content=payloads[i % len(payloads)],
                                    headers={"content-type": "application/json"})
                        i += a.clients
                        with lock:
                            done[0] += 1

                t1 = time.perf_counter()
                with ThreadPoolExecutor(a.clients) as pool:
                    list(pool.map(closed, range(a.clients)))
                rows.append({"candidates": n, "rate": a.rate, **open_loop,
                             "saturation_rps": done[0] / (time.perf_counter() - t1)})
                client.close()
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
    out = {"policy": a.policy, "workers": a.workers, "cpus": os.cpu_count(), "rows": rows}
    if a.json:
        print(json.dumps(out, indent=2))
        return
    print(f"policy {a.policy}, {a.workers} uvicorn workers, loopback, {os.cpu_count()} CPUs shared with the client")
    for r in rows:
        print(f"  {r['candidates']:>4} candidates at {r['rate']:.0f} req/s: p50 {r['p50_ms']:.1f} ms, "
              f"p99 {r['p99_ms']:.1f} ms, {r['errors']} errors / {r['requests']}; "
              f"saturation {r['saturation_rps']:.0f} req/s")


if __name__ == "__main__":
    main()

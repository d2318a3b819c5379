"""HTTP latency of the ranking service on loopback: `rlmtf serve --workers 2`, an open-loop load of
R requests/s for S seconds (p50/p99), then a closed loop of C concurrent clients (requests/s at
saturation), for 100 and 500 candidates and for each policy asked for. The load generator shares the
machine's cores with the server, so saturation figures are a lower bound.

    python benchmarks/bench_serve.py [--rate 100] [--seconds 10] [--candidates 100 500]
                                     [--policies baseline integrated esrl] [--durability fsync|process]
                                     [--client raw|httpx] [--json]

Policies: ``baseline`` (the hand-set fusion, no torch), ``integrated`` (IntegratedRL-MTF's actor,
user-level: one action per request) and ``esrl`` (the Enhanced-State RL actor, item-level: one action
per candidate), both hidden 256 x 256 with untrained weights (the cost does not depend on them), or
a saved policy directory.

Load generator (``--client raw``, the default): one asyncio loop writing pre-encoded HTTP/1.1
requests on keep-alive connections and reading the answers by Content-Length, so that the client
costs little of the shared CPU. Latency is measured from each request's *scheduled* send time (no
coordinated omission: a late client counts against the figure). ``--client httpx`` is the first
version's generator (a 32-thread pool sharing one ``httpx.Client``, latency from the actual send),
kept to compare with the figures measured with it. The server's CPU per request is the CPU time of
the server's process tree (/proc, Linux) during the open-loop phase divided by the requests sent;
"client lag" is how late the raw client sent (p99), and ``loadavg`` the machine's 1-minute load
average when the row started: on a shared machine both say how much of a figure is the neighbours'.

``--factory MODULE:FN`` serves another app factory through ``python -m uvicorn --factory`` (with the
same ``RLMTF_SERVE_*`` environment) instead of ``rlmtf serve``: a before/after comparison in one run.
"""

from __future__ import annotations

import argparse
import asyncio
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
from pathlib import Path

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


def make_policy(name: str, root: Path) -> str:
    """A policy spec for ``rlmtf serve --policy``: built-ins and directories as they are; ``integrated``
    and ``esrl`` are saved (untrained, hidden 256 x 256) under ``root``."""
    if name not in ("integrated", "esrl"):
        return name
    from rlmtf.algos.esrl import EnhancedStateRL, ESRLConfig
    from rlmtf.algos.integrated import IntegratedRL
    from rlmtf.envs.sim.config import SimConfig
    from rlmtf.envs.sim.world import feature_spec

    cls = IntegratedRL if name == "integrated" else EnhancedStateRL
    return str(cls(feature_spec(SimConfig()), ESRLConfig(hidden=(256, 256))).save_policy(root / name))


def tree_cpu(pid: int) -> float | None:
    """User + system CPU seconds of ``pid`` and its descendants (Linux /proc), None elsewhere."""
    try:
        tick = os.sysconf("SC_CLK_TCK")
        stats = {}
        for d in os.listdir("/proc"):
            if d.isdigit():
                try:
                    with open(f"/proc/{d}/stat") as f:
                        fields = f.read().rsplit(")", 1)[1].split()
                    stats[int(d)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick)  # ppid, cpu
                except (OSError, IndexError, ValueError):
                    continue
    except (OSError, ValueError, AttributeError):
        return None
    tree, frontier = {pid}, [pid]
    while frontier:
        p = frontier.pop()
        kids = [c for c, (pp, _) in stats.items() if pp == p and c not in tree]
        tree.update(kids)
        frontier += kids
    return sum(stats[p][1] for p in tree if p in stats)


# --- the raw asyncio client ------------------------------------------------------------------------


class RawClient:
    """Keep-alive HTTP/1.1 connections to one server; ``post`` returns the status code."""

    def __init__(self, port: int):
        self.port = port
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    @staticmethod
    def request(path: str, payload: bytes) -> bytes:
        return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(payload)}\r\n\r\n").encode() + payload

    async def post(self, raw: bytes) -> tuple[int, bytes]:
        """Send on an idle keep-alive connection, or a new one; a reused connection that the server
        closed meanwhile (uvicorn closes idle ones after 5 s) is retried once on a new one, as
        HTTP clients do."""
        if self.idle:
            try:
                return await self._roundtrip(self.idle.pop(), raw)
            except (OSError, asyncio.IncompleteReadError):
                pass
        return await self._roundtrip(await asyncio.open_connection("127.0.0.1", self.port), raw)

    async def _roundtrip(self, conn: tuple[asyncio.StreamReader, asyncio.StreamWriter], raw: bytes
                         ) -> tuple[int, bytes]:
        reader, writer = conn
        try:
            writer.write(raw)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            length = 0
            for line in head.split(b"\r\n")[1:]:
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            data = await reader.readexactly(length)
        except BaseException:
            writer.close()
            raise
        self.idle.append(conn)
        return status, data

    def close(self) -> None:
        for _, w in self.idle:
            w.close()
        self.idle.clear()


async def raw_open_loop(port: int, raws: list[bytes], rate: float, seconds: float
                        ) -> tuple[list[float], int, list[float]]:
    client = RawClient(port)
    for r in raws[:16]:  # warm-up: connections open, both workers touched
        await asyncio.gather(*(client.post(r) for _ in range(4)))
    lat: list[float] = []
    lag: list[float] = []
    errors = [0]

    async def one(raw: bytes, t_sched: float) -> None:
        lag.append(time.perf_counter() - t_sched)
        try:
            status, _ = await client.post(raw)
        except (OSError, asyncio.IncompleteReadError, ValueError):
            status = -1
        lat.append(time.perf_counter() - t_sched)
        errors[0] += status != 200

    total = int(rate * seconds)
    t0 = time.perf_counter() + 0.05
    tasks = []
    for i in range(total):
        t_sched = t0 + i / rate
        delay = t_sched - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(raws[i % len(raws)], t_sched)))
    await asyncio.gather(*tasks)
    client.close()
    return lat, errors[0], lag


async def raw_closed_loop(port: int, raws: list[bytes], clients: int, seconds: float) -> tuple[int, int]:
    done, errors = [0], [0]
    stop_at = time.perf_counter() + seconds

    async def worker(c: int) -> None:
        client = RawClient(port)
        i = c
        while time.perf_counter() < stop_at:
            status, _ = await client.post(raws[i % len(raws)])
            errors[0] += status != 200
            done[0] += 1
            i += clients
        client.close()

    await asyncio.gather(*(worker(c) for c in range(clients)))
    return done[0], errors[0]


# --- the httpx client (the first version's generator) ----------------------------------------------


def httpx_open_loop(url: str, payloads: list[bytes], rate: float, seconds: float) -> tuple[list[float], int]:
    import httpx

    lat: list[float] = []
    errors = [0]
    lock = threading.Lock()
    client = httpx.Client(timeout=10, limits=httpx.Limits(max_connections=64))

    def one(i: int) -> None:
        t = time.perf_counter()
        r = client.post(f"{url}/v1/rank", content=payloads[i % len(payloads)],
                        headers={"content-type": "application/json"})
        with lock:
            lat.append(time.perf_counter() - t)
            errors[0] += r.status_code != 200

    for i in range(10):
        one(i)
    lat.clear()
    with ThreadPoolExecutor(32) as pool:
        t0 = time.perf_counter()
        for i in range(int(rate * seconds)):
            delay = t0 + i / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            pool.submit(one, i)
    client.close()
    return lat, errors[0]


def httpx_closed_loop(url: str, payloads: list[bytes], clients: int, seconds: float) -> tuple[int, int]:
    import httpx

    done, errors = [0], [0]
    lock = threading.Lock()
    stop_at = time.perf_counter() + seconds
    client = httpx.Client(timeout=10, limits=httpx.Limits(max_connections=64))

    def closed(c: int) -> None:
        i = c
        while time.perf_counter() < stop_at:
            r = client.post(f"{url}/v1/rank", content=payloads[i % len(payloads)],
                            headers={"content-type": "application/json"})
            i += clients
            with lock:
                done[0] += 1
                errors[0] += r.status_code != 200

    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(closed, range(clients)))
    client.close()
    return done[0], errors[0]


# --- one server, one policy ------------------------------------------------------------------------


def start_server(a: argparse.Namespace, policy: str, log_dir: str, port: int) -> subprocess.Popen:
    if a.factory:
        env = {**os.environ, "RLMTF_SERVE_POLICY": policy, "RLMTF_SERVE_LOG_DIR": log_dir,
               "RLMTF_SERVE_DURABILITY": a.durability}
        cmd = [sys.executable, "-m", "uvicorn", "--factory", a.factory, "--port", str(port), "--workers",
               str(a.workers), "--log-level", "warning"]
        return subprocess.Popen(cmd, stderr=subprocess.DEVNULL, env=env)
    return subprocess.Popen([sys.executable, "-m", "rlmtf.cli", "serve", "--log-dir", log_dir, "--port", str(port),
                             "--workers", str(a.workers), "--policy", policy, "--durability", a.durability],
                            stderr=subprocess.DEVNULL)


def wait_ready(url: str, proc: subprocess.Popen) -> dict:
    import httpx

    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("the server exited at start-up")
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return httpx.get(f"{url}/v1/schema").json()
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError("the server did not start")


def measure(a: argparse.Namespace, policy_name: str, policy: str) -> list[dict]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    rows = []
    with tempfile.TemporaryDirectory() as log_dir:
        proc = start_server(a, policy, log_dir, port)
        try:
            schema = wait_ready(url, proc)
            time.sleep(1.0)  # let every worker finish starting
            rng = np.random.default_rng(0)
            for n in a.candidates:
                payloads = [json.dumps(body(schema, n, rng, i)).encode() for i in range(64)]
                load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
                cpu0, t0 = tree_cpu(proc.pid), time.perf_counter()
                if a.client == "raw":
                    raws = [RawClient.request("/v1/rank", p) for p in payloads]
                    lat, errors, lag = asyncio.run(raw_open_loop(port, raws, a.rate, a.seconds))
                else:
                    (lat, errors), lag = httpx_open_loop(url, payloads, a.rate, a.seconds), []
                cpu1, t1 = tree_cpu(proc.pid), time.perf_counter()
                ms = np.array(lat) * 1000
                open_loop = {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
                             "max_ms": float(ms.max()), "errors": errors, "requests": len(lat),
                             "client_lag_p99_ms": float(np.percentile(lag, 99) * 1000) if lag else None,
                             "server_cpu_ms_per_request": None if cpu0 is None or cpu1 is None
                             else 1000 * (cpu1 - cpu0) / len(lat), "achieved_rps": len(lat) / (t1 - t0)}
                if a.client == "raw":
                    done, sat_errors = asyncio.run(raw_closed_loop(port, raws, a.clients, a.seconds))
                else:
                    done, sat_errors = httpx_closed_loop(url, payloads, a.clients, a.seconds)
                rows.append({"policy": policy_name, "level": schema.get("policy_level"), "candidates": n,
                             "loadavg": load,
                             "rate": a.rate, **open_loop, "saturation_rps": done / a.seconds,
                             "saturation_errors": sat_errors})
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=30)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=float, default=100.0)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--candidates", type=int, nargs="+", default=[100, 500])
    ap.add_argument("--policies", nargs="+", default=["baseline"],
                    help="baseline, integrated (user-level actor), esrl (item-level actor) or a policy directory")
    ap.add_argument("--policy", help="one policy (same as --policies P)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--client", choices=("raw", "httpx"), default="raw")
    ap.add_argument("--durability", choices=("fsync", "process"), default="fsync")
    ap.add_argument("--factory", help="MODULE:FN app factory served with `python -m uvicorn --factory`")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    policies = [a.policy] if a.policy else a.policies
    rows = []
    with tempfile.TemporaryDirectory() as root:
        for name in policies:
            rows += measure(a, name, make_policy(name, Path(root)))
    out = {"workers": a.workers, "cpus": os.cpu_count(), "client": a.client, "factory": a.factory,
           "durability": a.durability,
           "seconds": a.seconds, "rows": rows}
    if a.json:
        print(json.dumps(out, indent=2))
        return
    print(f"{a.workers} uvicorn workers ({a.factory or 'rlmtf serve'}, durability {a.durability}), loopback, "
          f"{os.cpu_count()} CPUs shared with the {a.client} client, {a.seconds:g} s per phase")
    for r in rows:
        cpu, lag = r["server_cpu_ms_per_request"], r["client_lag_p99_ms"]
        load = "-" if r["loadavg"] is None else f"{r['loadavg']:.1f}"
        print(f"  {r['policy']:<10} ({r['level']}-level, load {load}) {r['candidates']:>4} candidates at "
              f"{r['rate']:.0f} req/s: "
              f"p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms, max {r['max_ms']:.1f} ms, "
              f"{r['errors']} errors / {r['requests']} (client lag p99 {'-' if lag is None else f'{lag:.1f}'} ms), "
              f"server CPU {'-' if cpu is None else f'{cpu:.1f}'} ms/req; "
              f"saturation {r['saturation_rps']:.0f} req/s ({r['saturation_errors']} errors)")


if __name__ == "__main__":
    main()

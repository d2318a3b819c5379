"""The ranking service behind a real uvicorn server on loopback: rank, feedback, export to training data;
with the simulator's features and with a policy trained on KuaiRand-Pure (skipped without the data)."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from rlmtf.data import build_transitions, read_logs

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rlmtf(*args: str, ok: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run([sys.executable, "-m", "rlmtf.cli", *args], capture_output=True, text=True, cwd=REPO,
                       check=False, timeout=600)
    if ok:
        assert p.returncode == 0, p.stderr[-3000:]
    return p


def start_server(log_dir: Path, port: int, *extra: str) -> subprocess.Popen:
    args = extra or ("--explore-fraction", "0.5")
    proc = subprocess.Popen([sys.executable, "-m", "rlmtf.cli", "serve", "--log-dir", str(log_dir), "--port",
                             str(port), "--models-dir", str(log_dir.parent), *args], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "RLMTF_ADMIN_TOKEN": "secret"})
    deadline = time.time() + 60
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            raise RuntimeError(f"server did not start: {proc.stderr.read().decode()[-2000:]}")
        time.sleep(0.2)


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=20)


@pytest.fixture()
def server(tmp_path):
    port = free_port()
    log_dir = tmp_path / "serve_log"
    proc = start_server(log_dir, port)
    yield f"http://127.0.0.1:{port}", log_dir
    stop(proc)


def _request(schema: dict, rng: np.random.Generator, user: str, session: str, n: int = 20) -> dict:
    def feats(group: dict) -> dict:
        return {k: (float(rng.random()) if d == 1 else rng.random(d).round(4).tolist()) for k, d in group.items()}

    return {"user_id": user, "session_id": session, "k": 5,
            "user_features": feats(schema["user_features"]), "context": feats(schema["context"]),
            "candidates": [{"item_id": f"i{j}", "item_features": feats(schema["item_features"]),
                            "mtl_scores": {t: float(rng.random()) for t in schema["mtl_tasks"]}} for j in range(n)]}


def test_serve_rank_feedback_export(server, tmp_path):
    url, log_dir = server
    schema = httpx.get(f"{url}/v1/schema").json()
    assert schema["mtl_tasks"] == ["valid", "watch_time", "finish", "like", "share"]
    rng = np.random.default_rng(0)
    explored = 0
    for u in range(6):
        for t in range(3):
            r = httpx.post(f"{url}/v1/rank", json=_request(schema, rng, f"u{u}", f"s{u}"), timeout=10)
            assert r.status_code == 200, r.text
            body = r.json()
            explored += body["explored"]
            assert len(body["items"]) == 5 and all(len(i["action"]) == 10 for i in body["items"])
            for pos, item in enumerate(body["items"]):
                fb = {"request_id": body["request_id"], "item_id": item["item_id"], "event_id": f"{u}-{t}-{pos}",
                      "behaviours": {"watch_time": 12.0 * pos, "valid": int(pos > 0), "like": int(pos == 1)},
                      "session_end": t == 2 and pos == 4}
                assert httpx.post(f"{url}/v1/feedback", json=fb, timeout=10).status_code == 200
                # the same event again is acknowledged and counted once
                assert httpx.post(f"{url}/v1/feedback", json=fb, timeout=10).status_code == 200
    assert 0 < explored < 18  # half the users explore (stable hash), each for all their requests
    bad = _request(schema, rng, "u9", "s9")
    bad["candidates"][0]["mtl_scores"]["like"] = "NaN"
    assert httpx.post(f"{url}/v1/rank", json=bad).status_code == 422
    assert httpx.post(f"{url}/v1/feedback", json={"request_id": "nope", "item_id": "i0", "behaviours": {}}
                      ).status_code == 404
    metrics = httpx.get(f"{url}/metrics").text
    assert "rank" in metrics
    out = tmp_path / "exported"
    p = subprocess.run([sys.executable, "-m", "rlmtf.cli", "logs", "export", "--log-dir", str(log_dir), "--out",
                        str(out), "--json"], capture_output=True, text=True, cwd=REPO, check=False)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["rows"] == 6 * 3 * 5
    data = read_logs(out)
    trans = build_transitions(data)
    assert len(trans) == 18 and int(trans.done.sum()) == 6
    # feedback became rewards: position 1 had watch 12 s, valid, like -> 12/60 + 1 + 2
    pos1 = data.columns["position"] == 1
    np.testing.assert_allclose(data.columns["reward"][pos1], 0.2 + 1.0 + 2.0, rtol=1e-6)


def test_every_acknowledged_record_survives_sigkill(tmp_path):
    """Load on loopback (bounded in count and time), SIGKILL mid-load, restart: every request and feedback
    the server acknowledged is in its log."""
    import sqlite3
    import threading

    port, log_dir = free_port(), tmp_path / "log"
    proc = start_server(log_dir, port)
    url = f"http://127.0.0.1:{port}"
    schema = httpx.get(f"{url}/v1/schema").json()
    acked_requests: list[str] = []
    acked_events: list[str] = []
    lock = threading.Lock()
    stop_at = time.time() + 20

    def client(c: int) -> None:
        rng = np.random.default_rng(c)
        with httpx.Client(timeout=5) as http:
            for i in range(200):  # bounded: at most 200 requests per client, and 20 s
                if time.time() > stop_at:
                    return
                try:
                    r = http.post(f"{url}/v1/rank", json=_request(schema, rng, f"u{c}", f"s{c}", n=10))
                    if r.status_code != 200:
                        return
                    rid = r.json()["request_id"]
                    with lock:
                        acked_requests.append(rid)
                    item = r.json()["items"][0]["item_id"]
                    fb = {"request_id": rid, "item_id": item, "event_id": f"{c}-{i}", "behaviours": {"valid": 1}}
                    if http.post(f"{url}/v1/feedback", json=fb).status_code == 200:
                        with lock:
                            acked_events.append(f"{c}-{i}")
                except httpx.HTTPError:
                    return  # the server is gone

    threads = [threading.Thread(target=client, args=(c,)) for c in range(4)]
    for t in threads:
        t.start()
    while len(acked_requests) < 40 and time.time() < stop_at:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=20)
    for t in threads:
        t.join(timeout=30)
    assert len(acked_requests) >= 40
    proc = start_server(log_dir, port)  # restart on the same log: it opens cleanly
    try:
        assert httpx.get(f"{url}/healthz").status_code == 200
    finally:
        stop(proc)
    con = sqlite3.connect(log_dir / "serve.sqlite3")
    logged = {r[0] for r in con.execute("SELECT request_id FROM requests")}
    events = {r[0] for r in con.execute("SELECT event_id FROM feedback")}
    con.close()
    assert set(acked_requests) <= logged
    assert set(acked_events) <= events


def test_closing_the_loop(server, tmp_path):
    """Serve with exploration, let simulated users drive sessions over HTTP, export, train a few steps,
    reload the trained policy, and serve with it."""
    url, log_dir = server

    small = tmp_path / "small.toml"
    small.write_text("n_users = 300\nn_items = 2000\n")
    first = json.loads(rlmtf("loop", "--server", url, "--users", "40", "--sessions", "30", "--seed", "1",
                             "--sim-config", str(small), "--json").stdout)
    assert first["sessions"] >= 30 and first["requests"] > 30 and first["feedback_events"] == 5 * first["requests"]
    data_dir = tmp_path / "served"
    rlmtf("logs", "export", "--log-dir", str(log_dir), "--out", str(data_dir))
    data = read_logs(data_dir)
    assert len(data) == 5 * first["requests"]
    explored = data.columns["upper_b"].max(1) > 0
    assert explored.any() and (~explored).any()  # --explore-fraction 0.5 of users
    run = tmp_path / "run"
    rlmtf("train", "--algo", "esrl", "--data", str(data_dir), "--out", str(run), "--steps", "3", "--hidden", "16,16",
          "--critics", "2", "--batch-size", "8", "--eval-every", "0")
    before = httpx.get(f"{url}/v1/schema").json()["policy_version"]
    r = httpx.post(f"{url}/v1/admin/reload", json={"policy": str(run / "policy")},
                   headers={"Authorization": "Bearer secret"}, timeout=30)
    assert r.status_code == 200, r.text
    after = httpx.get(f"{url}/v1/schema").json()["policy_version"]
    assert after != before
    second = json.loads(rlmtf("loop", "--server", url, "--users", "40", "--sessions", "10", "--seed", "2",
                              "--start-day", "1", "--sim-config", str(small), "--json").stdout)
    assert second["requests"] > 0
    import sqlite3

    con = sqlite3.connect(log_dir / "serve.sqlite3")
    versions = {v for (v,) in con.execute("SELECT DISTINCT policy_version FROM requests")}
    con.close()
    assert {before, after} <= versions


def test_load_through_two_workers(tmp_path):
    """`rlmtf serve --workers 2` under a bounded load (300 ranking requests and their feedback from 4
    threads, well under 30 s): no errors, every acknowledged request, shown item and feedback event in the
    log, and the per-user bounds file (--bounds) applied by both workers."""
    import sqlite3
    import threading

    from rlmtf.serve.store import decode_vector

    bounds = tmp_path / "bounds.json"
    bounds.write_text(json.dumps({"users": {"u0": {"lower_b": 0.0, "upper_b": 0.05}}}))
    port, log_dir = free_port(), tmp_path / "log"
    proc = start_server(log_dir, port, "--workers", "2", "--explore-fraction", "1", "--bounds", str(bounds))
    url = f"http://127.0.0.1:{port}"
    acked: dict[str, tuple[str, list[str]]] = {}  # request_id -> (user, shown item ids)
    events: set[str] = set()
    errors: list[str] = []
    lock = threading.Lock()
    try:
        schema = httpx.get(f"{url}/v1/schema").json()
        deadline = time.time() + 60

        def client(c: int) -> None:
            rng = np.random.default_rng(c)
            with httpx.Client(timeout=10) as http:
                for i in range(75):
                    if time.time() > deadline:
                        errors.append(f"client {c}: out of time after {i} requests")
                        return
                    user = f"u{(c + i) % 3}"
                    r = http.post(f"{url}/v1/rank", json=_request(schema, rng, user, f"s{c}", n=20))
                    if r.status_code != 200:
                        errors.append(f"rank {r.status_code}: {r.text[:200]}")
                        continue
                    out = r.json()
                    items = [it["item_id"] for it in out["items"]]
                    with lock:
                        acked[out["request_id"]] = (user, items)
                    fb = {"request_id": out["request_id"], "item_id": items[i % 5], "event_id": f"{c}-{i}",
                          "behaviours": {"watch_time": 3.0, "valid": 0}, "session_end": i == 74}
                    f = http.post(f"{url}/v1/feedback", json=fb)
                    if f.status_code != 200:
                        errors.append(f"feedback {f.status_code}: {f.text[:200]}")
                        continue
                    with lock:
                        events.add(fb["event_id"])

        t0 = time.time()
        threads = [threading.Thread(target=client, args=(c,)) for c in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.time() - t0
    finally:
        stop(proc)
    assert errors == [], errors[:5]
    assert len(acked) == 300 and len(events) == 300
    assert elapsed < 30, f"the load took {elapsed:.1f} s"
    con = sqlite3.connect(log_dir / "serve.sqlite3")
    try:
        logged = dict(con.execute("SELECT request_id, user_id FROM requests").fetchall())
        shown = con.execute("SELECT request_id, item_id, lower_b, upper_b FROM shown ORDER BY request_id, position"
                            ).fetchall()
        logged_events = {e for (e,) in con.execute("SELECT event_id FROM feedback")}
    finally:
        con.close()
    assert logged == {rid: user for rid, (user, _) in acked.items()}
    by_request: dict[str, list[str]] = {}
    for rid, item, lo, hi in shown:
        by_request.setdefault(rid, []).append(item)
        want = (0.0, 0.05) if logged[rid] == "u0" else (-0.15, 0.15)
        np.testing.assert_allclose(decode_vector(lo), [want[0]] * 10, atol=1e-6)
        np.testing.assert_allclose(decode_vector(hi), [want[1]] * 10, atol=1e-6)
    assert by_request == {rid: items for rid, (_, items) in acked.items()}
    assert logged_events == events


# --- a policy trained on KuaiRand-Pure, served with its own features --------------------------------------

@pytest.fixture(scope="module")
def kuairand_models(tmp_path_factory) -> Path:
    """Small response / MTL models fitted on a 15,000-row sample of KuaiRand-Pure (a few seconds)."""
    import torch

    from rlmtf.envs.kuairand.fit import FitConfig, fit_all
    from rlmtf.envs.kuairand.mtl import MTLConfig
    from rlmtf.envs.kuairand.paths import LOG_FILE, default_kuairand_dir
    from rlmtf.envs.kuairand.response import ResponseConfig

    d = default_kuairand_dir()
    if d is None or not (d / LOG_FILE).is_file():
        pytest.skip("KuaiRand-Pure not found (shared/data/kuairand_pure or $RLMTF_KUAIRAND_DIR)")
    small = FitConfig(response=ResponseConfig(hidden=(32, 16), epochs=2, batch_size=1024),
                      mtl=MTLConfig(hidden=(16,), epochs=1, batch_size=1024), max_train_rows=15_000,
                      max_test_rows=2_000)
    out = tmp_path_factory.mktemp("kuairand_models")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        fit_all(d, out, small, log=lambda s: None)
    finally:
        torch.set_num_threads(threads)
    return out


def test_a_kuairand_policy_is_served_with_its_features(kuairand_models, tmp_path):
    """Train on --env kuairand data, serve the run directory: /v1/schema lists KuaiRand-Pure's features, a
    request with them is ranked, feedback is taken, and the log exports to data with those features. The
    simulator's features (a request, --env sim, `rlmtf loop`) are refused with a message."""
    from rlmtf.data.io import read_meta
    from rlmtf.serve import policy_version, stable_id

    data, run, log_dir, exported = tmp_path / "kr", tmp_path / "run", tmp_path / "log", tmp_path / "exported"
    rlmtf("simulate", "--env", "kuairand", "--kuairand-models", str(kuairand_models), "--per", "item", "--explore",
          "uniform", "--sessions", "20", "--users", "100", "--seed", "1", "--out", str(data))
    rlmtf("train", "--algo", "esrl", "--data", str(data), "--out", str(run), "--steps", "3", "--hidden", "16,16",
          "--critics", "2", "--batch-size", "8", "--eval-every", "0", "--threads", "1")
    spec = read_meta(data).feature_spec
    # an address that cannot be bound: the refusal comes first, and nothing would listen if it did not
    p = rlmtf("serve", "--policy", str(run), "--env", "sim", "--log-dir", str(tmp_path / "never"), "--host",
              "256.0.0.1", ok=False)
    assert p.returncode == 2 and "other features than --env sim" in " ".join(p.stderr.split()), p.stderr
    port = free_port()
    proc = start_server(log_dir, port, "--policy", str(run))
    url = f"http://127.0.0.1:{port}"
    try:
        schema = httpx.get(f"{url}/v1/schema").json()
        assert schema["user_features"] == {**spec.user_profile.names(), **spec.user_history.names()}
        assert schema["item_features"] == spec.item_features.names() and schema["context"] == spec.context.names()
        assert schema["policy_level"] == "item" and schema["policy_version"] == policy_version(str(run / "policy"))
        rng = np.random.default_rng(0)
        for t in range(2):
            r = httpx.post(f"{url}/v1/rank", json=_request(schema, rng, "u1", "s1", n=12), timeout=10)
            assert r.status_code == 200, r.text
            body = r.json()
            assert len(body["items"]) == 5
            for pos, item in enumerate(body["items"]):
                fb = {"request_id": body["request_id"], "item_id": item["item_id"], "event_id": f"{t}-{pos}",
                      "behaviours": {"watch_time": 5.0, "valid": int(pos == 0)}, "session_end": t == 1 and pos == 4}
                assert httpx.post(f"{url}/v1/feedback", json=fb, timeout=10).status_code == 200
        sim_schema = {"user_features": {"age": 1}, "context": {"hour_sin": 1}, "item_features": {"category": 16},
                      "mtl_tasks": schema["mtl_tasks"]}
        assert httpx.post(f"{url}/v1/rank", json=_request(sim_schema, rng, "u2", "s2"), timeout=10).status_code == 422
        small = tmp_path / "small.toml"
        small.write_text("n_users = 300\nn_items = 2000\n")
        p = rlmtf("loop", "--server", url, "--users", "5", "--sessions", "1", "--sim-config", str(small), ok=False)
        assert p.returncode == 2 and "accepts other user_features" in " ".join(p.stderr.split()), p.stderr
    finally:
        stop(proc)
    # a built-in policy on the same log: with --env kuairand it gets the same features, without them it is refused
    p = rlmtf("serve", "--policy", "baseline", "--log-dir", str(log_dir), "--host", "256.0.0.1", ok=False)
    assert p.returncode == 2 and "another log directory" in " ".join(p.stderr.split()), p.stderr
    proc = start_server(log_dir, port, "--policy", "baseline", "--env", "kuairand", "--kuairand-models",
                        str(kuairand_models))
    try:
        again = httpx.get(f"{url}/v1/schema").json()
        assert again["user_features"] == schema["user_features"] and again["policy_version"] == "baseline"
        assert httpx.post(f"{url}/v1/rank", json=_request(schema, rng, "u3", "s3"), timeout=10).status_code == 200
    finally:
        stop(proc)
    out = json.loads(rlmtf("logs", "export", "--log-dir", str(log_dir), "--out", str(exported), "--json").stdout)
    assert out["rows"] == 15 and out["sessions"] == 2
    logs = read_logs(exported)
    assert logs.meta.feature_spec == spec
    trans = build_transitions(logs)
    assert len(trans) == 3 and int(trans.done.sum()) == 2
    served = logs.columns["user_id"] == stable_id("u1")
    assert logs.columns["valid"][served & (logs.columns["position"] == 0)].tolist() == [1, 1]

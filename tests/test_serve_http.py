"""The ranking service behind a real uvicorn server on loopback: rank, feedback, export to training data."""

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


@pytest.fixture()
def server(tmp_path):
    port = free_port()
    log_dir = tmp_path / "serve_log"
    proc = subprocess.Popen([sys.executable, "-m", "rlmtf.cli", "serve", "--log-dir", str(log_dir), "--port",
                             str(port), "--explore-fraction", "0.5"], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env={**os.environ, "RLMTF_ADMIN_TOKEN": "secret"})
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while True:
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            raise RuntimeError(f"server did not start: {proc.stderr.read().decode()[-2000:]}")
        time.sleep(0.2)
    yield url, log_dir
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


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

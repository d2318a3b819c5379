"""The online ranking service (SPEC section 12): wire format, validation, exploration, durable log,
admin reload, metrics and the export of the serving log to the logged-data Parquet of SPEC 11."""

import dataclasses
import json
import sqlite3

import numpy as np
import pytest
from fastapi.testclient import TestClient

from rlmtf.algos.esrl import ESRLConfig
from rlmtf.algos.train import TrainConfig, train
from rlmtf.data import build_transitions, read_logs
from rlmtf.policy.fixed import baseline_policy
from rlmtf.reward import RewardWeights
from rlmtf.serve import create_app, explore_assigned, export_logs, stable_id
from rlmtf.serve.store import DB_NAME
from rlmtf.sim.collect import behaviour_policy, simulate_to_parquet
from rlmtf.sim.config import SimConfig
from rlmtf.sim.simulator import Simulator
from rlmtf.sim.world import feature_spec

SPEC = feature_spec(SimConfig())
TOKEN = "s3cret-token"


def _values(group, rng):
    return {n: (float(rng.random()) if d == 1 else rng.random(d).round(4).tolist()) for n, d in group.fields}


def rank_body(user="u1", session="s1", n=8, k=5, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "user_id": user, "session_id": session, "k": k,
        "user_features": {**_values(SPEC.user_profile, rng), **_values(SPEC.user_history, rng)},
        "context": _values(SPEC.context, rng),
        "candidates": [{"item_id": f"i{j}", "item_features": _values(SPEC.item_features, rng),
                        "mtl_scores": {t: float(rng.uniform(0.001, 0.9)) for t in SPEC.mtl_tasks}}
                       for j in range(n)],
    }


def _db(log_dir):
    return sqlite3.connect(str(log_dir / DB_NAME))


@pytest.fixture
def log_dir(tmp_path):
    return tmp_path / "log"


@pytest.fixture
def client(log_dir):
    with TestClient(create_app("baseline", feature_spec=SPEC, log_dir=log_dir)) as c:
        yield c


# --- schema and ranking -----------------------------------------------------------------------------------

def test_schema(client):
    s = client.get("/v1/schema").json()
    assert s["mtl_tasks"] == ["valid", "watch_time", "finish", "like", "share"]
    assert s["max_candidates"] == 2000 and s["policy_version"] == "baseline"
    assert s["user_features"] == {**SPEC.user_profile.names(), **SPEC.user_history.names()}
    assert s["item_features"]["category"] == 16 and s["context"] == SPEC.context.names()
    assert client.get("/healthz").json()["status"] == "ok"


def test_rank_happy_path_and_logged(client, log_dir):
    body = rank_body(n=12, k=5)
    r = client.post("/v1/rank", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["policy_version"] == "baseline" and out["explored"] is False and len(out["request_id"]) == 32
    items = out["items"]
    assert len(items) == 5 and len({i["item_id"] for i in items}) == 5
    scores = [i["score"] for i in items]
    assert scores == sorted(scores, reverse=True)
    # the top 5 by fused score among all 12 candidates, with the baseline action for everyone
    base = baseline_policy()
    from rlmtf.fusion import final_score
    a = np.asarray(base.action, dtype=np.float64)
    all_scores = {c["item_id"]: float(final_score(np.array([c["mtl_scores"][t] for t in SPEC.mtl_tasks]), a))
                  for c in body["candidates"]}
    best = sorted(all_scores, key=all_scores.get, reverse=True)[:5]
    assert [i["item_id"] for i in items] == best
    for it in items:
        assert len(it["action"]) == 10 and all(-1 <= x <= 1 for x in it["action"])
        np.testing.assert_allclose(it["action"], a, atol=1e-6)
        assert it["score"] == pytest.approx(all_scores[it["item_id"]], rel=1e-5)
    with _db(log_dir) as db:
        (n_req,) = db.execute("SELECT COUNT(*) FROM requests WHERE request_id = ?", (out["request_id"],)).fetchone()
        shown = db.execute("SELECT position, item_id, lower_b, upper_b FROM shown WHERE request_id = ? "
                           "ORDER BY position", (out["request_id"],)).fetchall()
    assert n_req == 1 and [s[1] for s in shown] == best
    assert json.loads(shown[0][2]) == [0.0] * 10 == json.loads(shown[0][3])  # no exploration: empty box


def _bad(client, body, *field):
    r = client.post("/v1/rank", content=json.dumps(body), headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    locs = [d["loc"] for d in r.json()["detail"]]
    assert any(list(field) == loc[-len(field):] for loc in locs), (field, locs)
    return r


def _set(path, value):
    def f(b):
        *head, last = path
        for p in head:
            b = b[p]
        b[last] = value
    return f


def _del(path):
    def f(b):
        *head, last = path
        for p in head:
            b = b[p]
        del b[last]
    return f


NAN, INF = float("nan"), float("inf")
BAD_RANK = [
    (_del(["user_id"]), ("user_id",)),
    (_set(["context", "hour_sin"], NAN), ("context", "hour_sin")),
    (_set(["candidates", 2, "mtl_scores", "like"], INF), ("candidates", 2, "mtl_scores", "like")),
    (_set(["candidates", 1, "item_features", "category", 3], NAN), ("candidates", 1, "item_features", "category", 3)),
    (_set(["candidates", 1, "item_features", "category"], [0.0] * 3), ("candidates", 1, "item_features", "category")),
    (_set(["user_features", "shoe_size"], 42.0), ("user_features", "shoe_size")),
    (_del(["user_features", "activity"]), ("user_features", "activity")),
    (_del(["candidates", 0, "mtl_scores", "share"]), ("candidates", 0, "mtl_scores", "share")),
    (_set(["candidates", 0, "mtl_scores", "valid"], -0.1), ("candidates", 0, "mtl_scores", "valid")),
    (_set(["candidates"], []), ("candidates",)),
    (_set(["candidates", 3, "item_id"], "i0"), ("candidates", 3, "item_id")),
    (_set(["k"], 0), ("k",)),
    (_set(["k"], 9), ("k",)),
    (_set(["k"], -1), ("k",)),
]


@pytest.mark.parametrize("mutate,field", BAD_RANK, ids=["/".join(map(str, f)) + f"#{i}" for i, (_, f) in
                                                         enumerate(BAD_RANK)])
def test_rank_validation_names_the_field(client, log_dir, mutate, field):
    body = rank_body(n=8)
    mutate(body)
    _bad(client, body, *field)
    with _db(log_dir) as db:  # nothing logged for a rejected request
        assert db.execute("SELECT COUNT(*) FROM requests").fetchone()[0] == 0


def test_too_many_candidates_and_body_limit(log_dir):
    with TestClient(create_app(feature_spec=SPEC, log_dir=log_dir, max_candidates=6)) as c:
        _bad(c, rank_body(n=7), "candidates")
        assert c.post("/v1/rank", json=rank_body(n=6)).status_code == 200
    with TestClient(create_app(feature_spec=SPEC, log_dir=log_dir, max_body_bytes=2000)) as c:
        assert c.post("/v1/rank", json=rank_body(n=30)).status_code == 413


# --- feedback ---------------------------------------------------------------------------------------------

def test_feedback_unknown_request_item_and_idempotency(client, log_dir):
    assert client.post("/v1/feedback", json={"request_id": "nope", "item_id": "i1"}).status_code == 404
    out = client.post("/v1/rank", json=rank_body(n=8, k=3)).json()
    shown = [i["item_id"] for i in out["items"]]
    not_shown = next(f"i{j}" for j in range(8) if f"i{j}" not in shown)
    r = client.post("/v1/feedback", json={"request_id": out["request_id"], "item_id": not_shown})
    assert r.status_code == 422 and "item_id" in r.json()["detail"][0]["loc"]
    r = client.post("/v1/feedback", json={"request_id": out["request_id"], "item_id": shown[0],
                                          "behaviours": {"like": 2}})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"][-1] == "like"
    r = client.post("/v1/feedback", json={"request_id": out["request_id"], "item_id": shown[0],
                                          "behaviours": {"dance": 1}})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"][-1] == "dance"
    r = client.post("/v1/feedback", content=json.dumps({"request_id": out["request_id"], "item_id": shown[0],
                                                        "behaviours": {"watch_time": float("nan")}}),
                    headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"][-1] == "watch_time"
    ev = {"request_id": out["request_id"], "item_id": shown[0], "event_id": "e1",
          "behaviours": {"watch_time": 30.0, "valid": 1, "like": 1}}
    first, again = client.post("/v1/feedback", json=ev), client.post("/v1/feedback", json=ev)
    assert first.status_code == again.status_code == 200
    assert first.json()["duplicate"] is False and again.json()["duplicate"] is True
    with _db(log_dir) as db:
        assert db.execute("SELECT COUNT(*) FROM feedback").fetchone()[0] == 1


# --- exploration ------------------------------------------------------------------------------------------

def test_exploration_all_users(log_dir):
    base = np.asarray(baseline_policy().action, dtype=np.float32)
    with TestClient(create_app(feature_spec=SPEC, log_dir=log_dir, explore_fraction=1.0, seed=3)) as c:
        ids = []
        for u in range(5):
            out = c.post("/v1/rank", json=rank_body(user=f"user{u}", seed=u)).json()
            assert out["explored"] is True
            for it in out["items"]:
                a = np.asarray(it["action"])
                assert np.all(np.abs(a) <= 1) and np.all(np.abs(a - base) <= 0.15 + 1e-6)
            # user-level policy: one noise draw per request, shared by every shown item
            assert all(it["action"] == out["items"][0]["action"] for it in out["items"])
            ids.append(out["request_id"])
        assert 'rlmtf_explored_total 5' in c.get("/metrics").text
    with _db(log_dir) as db:
        rows = db.execute("SELECT s.mu_bp, s.lower_b, s.upper_b, s.action, r.explored FROM shown s "
                          "JOIN requests r USING (request_id)").fetchall()
    assert len(rows) == 25
    for *vecs, explored in rows:
        mu, lo, hi, act = (np.asarray(json.loads(x)) for x in vecs)
        assert explored == 1
        np.testing.assert_allclose(mu, base, atol=1e-6)
        np.testing.assert_allclose(lo, -0.15, atol=1e-6)
        np.testing.assert_allclose(hi, 0.15, atol=1e-6)
        assert np.all(act >= np.clip(mu + lo, -1, 1) - 1e-6) and np.all(act <= np.clip(mu + hi, -1, 1) + 1e-6)


def test_exploration_fraction_zero_and_stable_assignment(log_dir):
    with TestClient(create_app(feature_spec=SPEC, log_dir=log_dir, explore_fraction=0.0)) as c:
        assert not any(c.post("/v1/rank", json=rank_body(user=f"u{i}")).json()["explored"] for i in range(5))
    share = np.mean([explore_assigned(f"user-{i}", 0.3) for i in range(4000)])
    assert 0.27 < share < 0.33
    assert all(explore_assigned(f"user-{i}", 0.3) == explore_assigned(f"user-{i}", 0.3) for i in range(50))
    with TestClient(create_app(feature_spec=SPEC, log_dir=log_dir, explore_fraction=0.5)) as c:
        for i in range(6):
            u = f"u{i}"
            got = {c.post("/v1/rank", json=rank_body(user=u, seed=s)).json()["explored"] for s in range(2)}
            assert got == {explore_assigned(u, 0.5)}


def test_metrics(client):
    client.post("/v1/rank", json=rank_body())
    client.post("/v1/rank", json=rank_body(k=0))
    text = client.get("/metrics").text
    assert 'rlmtf_requests_total{path="/v1/rank",status="200"} 1' in text
    assert 'rlmtf_errors_total{path="/v1/rank"} 1' in text
    assert 'rlmtf_rank_latency_seconds_bucket{le="+Inf"} 2' in text
    assert 'rlmtf_model_info{version="baseline"} 1' in text


# --- admin reload -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained_policy(tmp_path_factory):
    """A tiny Enhanced-State RL policy trained for a few steps on simulated exploration logs."""
    root = tmp_path_factory.mktemp("serve_train")
    sim = Simulator(dataclasses.replace(SimConfig(), n_users=60, n_items=600))
    simulate_to_parquet(sim, behaviour_policy(baseline_policy(), "uniform", "item", seed=1), root / "logs",
                        seed=1, sessions=30)
    cfg = ESRLConfig(hidden=(16, 16), embed_dim=8, ensemble_size=2, warmup_steps=1, batch_size=16)
    train("esrl", root / "logs", root / "run", cfg=TrainConfig(steps=2, eval_every=0, checkpoint_every=100),
          algo_cfg=cfg)
    return root / "run" / "policy"


def _reload(c, policy, token=TOKEN):
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    return c.post("/v1/admin/reload", json={"policy": str(policy)}, headers=headers)


def test_reload(client, monkeypatch, trained_policy, tmp_path):
    monkeypatch.setenv("RLMTF_ADMIN_TOKEN", TOKEN)
    assert _reload(client, trained_policy, token=None).status_code == 401
    assert _reload(client, trained_policy, token="wrong").status_code == 403
    bad = _reload(client, tmp_path / "no-such-policy")
    assert bad.status_code == 422 and "no-such-policy" in bad.json()["detail"]
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "policy.json").write_text((trained_policy / "policy.json").read_text())
    (broken / "actor.safetensors").write_bytes(b"not a safetensors file")
    assert _reload(client, broken).status_code == 422
    assert client.get("/v1/schema").json()["policy_version"] == "baseline"
    assert client.post("/v1/rank", json=rank_body()).json()["policy_version"] == "baseline"

    r = _reload(client, trained_policy)
    assert r.status_code == 200, r.text
    version = r.json()["policy_version"]
    assert version != "baseline" and len(version) == 12 and r.json()["level"] == "item"
    assert client.get("/v1/schema").json()["policy_version"] == version
    out = client.post("/v1/rank", json=rank_body(n=20, k=5)).json()
    assert out["policy_version"] == version
    acts = np.asarray([it["action"] for it in out["items"]])
    assert np.all(np.abs(acts) <= 1)
    assert np.abs(acts - acts[:1]).max() > 1e-4  # item-level: one action per user-item pair
    scores = [it["score"] for it in out["items"]]
    assert scores == sorted(scores, reverse=True)
    assert f'rlmtf_model_info{{version="{version}"}} 1' in client.get("/metrics").text
    # same files -> same version; back to the baseline
    assert _reload(client, trained_policy).json()["policy_version"] == version
    assert _reload(client, "baseline").json()["policy_version"] == "baseline"


def test_reload_disabled_without_env(client, monkeypatch):
    monkeypatch.delenv("RLMTF_ADMIN_TOKEN", raising=False)
    assert _reload(client, "baseline", token="anything").status_code == 403


# --- export -----------------------------------------------------------------------------------------------

def test_export_round_trip(log_dir, tmp_path):
    rng = np.random.default_rng(0)
    acked_requests, acked_events = set(), set()
    expected: dict[tuple[str, str], dict] = {}  # (request_id, item_id) -> merged behaviours
    plan = {("alice", "s1"): 3, ("bob", "s1"): 2, ("carol", "s9"): 4}  # carol's ends after request 2
    order: dict[tuple[str, str], list[str]] = {}
    with TestClient(create_app(feature_spec=SPEC, log_dir=log_dir, explore_fraction=0.5, seed=1)) as c:
        for (user, session), n_req in plan.items():
            for t in range(n_req):
                out = c.post("/v1/rank", json=rank_body(user=user, session=session, n=9, k=5, seed=t)).json()
                acked_requests.add(out["request_id"])
                order.setdefault((user, session), []).append(out["request_id"])
                for it in out["items"][:3]:
                    beh = {"watch_time": float(rng.uniform(0, 60)), "valid": int(rng.integers(0, 2)),
                           "like": int(rng.integers(0, 2)), "share": 0, "collect": 0, "follow": 0, "comment": 0}
                    end = user == "carol" and t == 1 and it is out["items"][0]
                    ev = {"request_id": out["request_id"], "item_id": it["item_id"], "behaviours": beh,
                          "event_id": f"{out['request_id']}-{it['item_id']}", "session_end": end}
                    assert c.post("/v1/feedback", json=ev).status_code == 200
                    assert c.post("/v1/feedback", json=ev).json()["duplicate"] is True  # a retry
                    acked_events.add(ev["event_id"])
                    expected[(out["request_id"], it["item_id"])] = beh
        # one request with another k: not exportable into a list_len=5 dataset, reported as skipped
        acked_requests.add(c.post("/v1/rank", json=rank_body(user="dave", k=3)).json()["request_id"])

    with _db(log_dir) as db:
        assert {r[0] for r in db.execute("SELECT request_id FROM requests")} == acked_requests
        assert {r[0] for r in db.execute("SELECT event_id FROM feedback")} == acked_events

    summary = export_logs(log_dir, tmp_path / "out", SPEC)
    assert summary["skipped_requests"] == 1 and summary["requests"] == 9 and summary["rows"] == 45
    assert summary["sessions"] == 4  # carol's session splits at session_end
    data = read_logs(tmp_path / "out")
    trans = build_transitions(data)
    assert len(trans) == 9 and int(trans.done.sum()) == 4
    col = data.columns
    w = RewardWeights()
    row_of = {(int(s), int(t), int(p)): i for i, (s, t, p) in
              enumerate(zip(col["session_id"], col["t"], col["position"], strict=True))}
    assert len(row_of) == 45
    for (user, session), rids in order.items():
        # carol's session_end (on her request t=1) starts a new exported session
        segments = [rids[:2], rids[2:]] if user == "carol" else [rids]
        for seg_i, seg in enumerate(segments):
            sid = stable_id(user, session, str(seg_i))
            for t, rid in enumerate(seg):
                with _db(log_dir) as db:
                    shown = db.execute("SELECT position, item_id FROM shown WHERE request_id = ?", (rid,)).fetchall()
                for pos, item in shown:
                    i = row_of[(sid, t, pos)]
                    assert col["item_id"][i] == stable_id(item) and col["user_id"][i] == stable_id(user)
                    assert bool(col["done"][i]) == (t == len(seg) - 1)
                    beh = expected.get((rid, item), dict.fromkeys(("watch_time", "valid", "like"), 0))
                    want = beh["watch_time"] / 60 * w.watch_time + beh["valid"] * w.valid + beh["like"] * w.like
                    assert float(col["reward"][i]) == pytest.approx(want, abs=1e-4)
                    assert float(col["watch_time"][i]) == pytest.approx(beh["watch_time"], abs=1e-3)
                    assert int(col["like"][i]) == beh["like"] and float(col["watch_ratio"][i]) == 0.0
    # carol: t = 0, 1 then a new session with t = 0, 1
    carol = col["user_id"] == stable_id("carol")
    assert len(set(col["session_id"][carol].tolist())) == 2
    assert sorted(set(col["t"][carol].tolist())) == [0, 1]
    np.testing.assert_allclose(trans.reward, trans.item_reward.sum(1), rtol=1e-6)
    assert np.all(trans.lower_b <= trans.upper_b)

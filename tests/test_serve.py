"""The online ranking service (``docs/design.md#the-ranking-service``): wire format, validation, exploration, durable
log, admin reload, metrics and the export of the serving log to the logged-data Parquet of
``docs/design.md#logged-data``."""

import dataclasses
import json
import math
import sqlite3

import numpy as np
import pytest
from fastapi.testclient import TestClient

from rlmtf.algos.esrl import EnhancedStateRL, ESRLConfig
from rlmtf.algos.registry import PolicyLoadError
from rlmtf.core.reward import RewardWeights
from rlmtf.core.schema import FeatureGroup, FeatureSpec
from rlmtf.data import build_transitions, read_logs
from rlmtf.envs.collect import behaviour_policy, simulate_to_parquet
from rlmtf.envs.sim.config import SimConfig
from rlmtf.envs.sim.simulator import Simulator
from rlmtf.envs.sim.world import feature_spec
from rlmtf.policy.fixed import baseline_policy
from rlmtf.serve import create_app, explore_assigned, export_logs, policy_version, stable_id
from rlmtf.serve.store import DB_NAME, decode_vector
from rlmtf.serve.wire import spec_difference
from rlmtf.train.loop import TrainConfig, train

SPEC = feature_spec(SimConfig())
TOKEN = "s3cret-token"


def _values(group, rng):
    return {n: (float(rng.random()) if d == 1 else rng.random(d).round(4).tolist()) for n, d in group.fields}


def rank_body(user="u1", session="s1", n=8, k=5, seed=0, spec=SPEC):
    rng = np.random.default_rng(seed)
    return {
        "user_id": user, "session_id": session, "k": k,
        "user_features": {**_values(spec.user_profile, rng), **_values(spec.user_history, rng)},
        "context": _values(spec.context, rng),
        "candidates": [{"item_id": f"i{j}", "item_features": _values(spec.item_features, rng),
                        "mtl_scores": {t: float(rng.uniform(0.001, 0.9)) for t in spec.mtl_tasks}}
                       for j in range(n)],
    }


def _db(log_dir):
    return sqlite3.connect(str(log_dir / DB_NAME))


@pytest.fixture
def log_dir(tmp_path):
    return tmp_path / "log"


@pytest.fixture
def client(log_dir, tmp_path):
    # reloads may load from pytest's whole temporary tree (the trained policies live in other test dirs)
    with TestClient(create_app("baseline", feature_spec=SPEC, log_dir=log_dir, models_dir=tmp_path.parent)) as c:
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
    from rlmtf.core.fusion import final_score
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
    assert decode_vector(shown[0][2]) == [0.0] * 10 == decode_vector(shown[0][3])  # no exploration: empty box


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
        mu, lo, hi, act = (np.asarray(decode_vector(x)) for x in vecs)
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
    assert bad.status_code == 422 and "no-such-policy" in bad.json()["detail"][0]["msg"]
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


# --- the fast parser ----------------------------------------------------------------------------------------

BAD_RANK_MORE = [
    (_set(["candidates", 4, "item_features", "freshness"], "0.5"), ("candidates", 4, "item_features", "freshness")),
    (_set(["candidates", 4, "mtl_scores", "finish"], True), ("candidates", 4, "mtl_scores", "finish")),
    (_set(["candidates", 5, "item_features", "category"], 0.5), ("candidates", 5, "item_features", "category")),
    (_set(["candidates", 5, "item_features", "freshness"], [0.1, 0.2]),
     ("candidates", 5, "item_features", "freshness")),
    (_set(["candidates", 6, "item_features", "category", 2], 1e300),
     ("candidates", 6, "item_features", "category", 2)),
    (_set(["candidates", 6, "mtl_scores", "like"], 1e39), ("candidates", 6, "mtl_scores", "like")),
    (_set(["candidates", 7, "item_features", "colour"], 1.0), ("candidates", 7, "item_features", "colour")),
    (_set(["candidates", 7, "mtl_scores", "dwell"], 0.1), ("candidates", 7, "mtl_scores", "dwell")),
    (_set(["candidates", 7, "extra"], 1), ("candidates", 7, "extra")),
    (_set(["candidates", 2, "item_id"], ""), ("candidates", 2, "item_id")),
    (_set(["user_features", "top_interests"], [0.0] * 15), ("user_features", "top_interests")),
    (_set(["context", "hour_sin"], 1e40), ("context", "hour_sin")),
    (_set(["shoe_size"], 42), ("shoe_size",)),
    (_set(["candidates", 1], "i1"), ("candidates", 1)),
]


@pytest.mark.parametrize("mutate,field", BAD_RANK_MORE, ids=["/".join(map(str, f)) + f"#{i}" for i, (_, f) in
                                                              enumerate(BAD_RANK_MORE)])
def test_rank_validation_more_cases(client, log_dir, mutate, field):
    body = rank_body(n=8)
    mutate(body)
    _bad(client, body, *field)
    with _db(log_dir) as db:
        assert db.execute("SELECT COUNT(*) FROM requests").fetchone()[0] == 0


def test_rank_invalid_json_and_first_error_in_order(client):
    r = client.post("/v1/rank", content=b'{"user_id": "u1", "candidates": [',
                    headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"][0] == "body"
    body = rank_body(n=8)
    body["candidates"][6]["mtl_scores"]["like"] = -1.0  # two errors: the exact walk reports the first in order
    body["candidates"][3]["item_features"]["category"] = [0.0] * 15
    locs = [d["loc"] for d in _bad(client, body, "candidates", 3, "item_features", "category").json()["detail"]]
    assert locs == [["body", "candidates", 3, "item_features", "category"]]


def test_fast_and_exact_paths_agree():
    """The bulk path and the per-field walk build the same arrays; a one-element list for a scalar
    feature is not for the bulk path (it falls back) but is accepted, as before."""
    from rlmtf.serve.wire import RankParser, RankRequest

    parser = RankParser(SPEC)
    for seed in range(5):
        body = rank_body(n=30, seed=seed)
        cands = RankRequest.model_validate(body).candidates
        fast, exact = parser._items_fast(cands), parser._items_exact(cands)
        assert fast is not None and fast[0] == exact[0]
        np.testing.assert_array_equal(fast[1], exact[1])
        np.testing.assert_array_equal(fast[2], exact[2])
    body = rank_body(n=6)
    body["candidates"][2]["item_features"]["freshness"] = [0.25]
    cands = RankRequest.model_validate(body).candidates
    assert parser._items_fast(cands) is None
    parsed = parser.parse(json.dumps(body).encode())
    assert parsed.item_features[2, SPEC.item_features.slices()["freshness"]].tolist() == [0.25]


def test_rank_with_list_for_scalar_feature_is_served(client):
    body = rank_body(n=6)
    body["candidates"][1]["item_features"]["freshness"] = [0.5]
    body["user_features"]["age"] = [0.3]
    assert client.post("/v1/rank", json=body).status_code == 200


# --- the durable log: group commit, durability settings -------------------------------------------------------

def test_group_commit_many_threads(tmp_path):
    """Concurrent writes share commits; every acknowledged write is in the database, and a failing write
    (a duplicate request id) fails alone without taking its group down."""
    import threading

    from rlmtf.serve.store import ServeStore, ShownItem

    store = ServeStore(tmp_path, SPEC.to_json())
    item = ShownItem(position=0, item_id="i0", item_features=np.zeros(20), mtl_scores=np.full(5, 0.1),
                     mu_bp=np.zeros(10), lower_b=np.zeros(10), upper_b=np.zeros(10), action=np.zeros(10), score=1.0)

    def log(rid: str):
        return store.log_request_async(request_id=rid, user_id="u", session_id="s", policy_version="v",
                                       explored=False, user_profile=np.zeros(19), user_history=np.zeros(23),
                                       context=np.zeros(4), shown=[item])

    futures, lock = [], threading.Lock()

    def worker(w: int) -> None:
        for i in range(50):
            f = log(f"r{w}-{i}")
            with lock:
                futures.append(f)

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    dup = log("r0-0")
    for f in futures:
        f.result(timeout=30)
    with pytest.raises(sqlite3.IntegrityError):
        dup.result(timeout=30)
    assert store.log_feedback(event_id="e1", request_id="r1-1", item_id="i0", behaviours={"like": 1.0},
                              session_end=False) is True
    assert store.log_feedback(event_id="e1", request_id="r1-1", item_id="i0", behaviours={"like": 1.0},
                              session_end=False) is False
    assert store.counts() == {"requests": 200, "shown": 200, "feedback": 1}
    assert store.shown_status("r1-1", "i0") == (True, True) and store.shown_status("r1-1", "i9") == (True, False)
    assert store.shown_status("nope", "i0") == (False, False)
    assert store.writes == 203 and store.groups <= store.writes
    store.close()
    with pytest.raises(RuntimeError, match="closed"):
        log("late")
    with pytest.raises(ValueError, match="durability"):
        ServeStore(tmp_path / "other", durability="sometimes")


@pytest.mark.parametrize("durability,synchronous", [("fsync", 2), ("process", 1)])
def test_durability_setting(tmp_path, durability, synchronous):
    with TestClient(create_app(feature_spec=SPEC, log_dir=tmp_path, durability=durability)) as c:
        store = c.app.state.store
        assert store._wconn.execute("PRAGMA synchronous").fetchone()[0] == synchronous  # 2 = FULL, 1 = NORMAL
        assert store._wconn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert c.post("/v1/rank", json=rank_body()).status_code == 200
        assert "rlmtf_log_writes_total 1" in c.get("/metrics").text


def test_old_json_vectors_still_export(log_dir, tmp_path):
    """Logs written before vectors became float32 BLOBs (JSON text in the same columns) still export."""
    from rlmtf.serve.store import decode_vector

    with TestClient(create_app(feature_spec=SPEC, log_dir=log_dir)) as c:
        for t in range(2):
            c.post("/v1/rank", json=rank_body(user="old", seed=t))
    with _db(log_dir) as db:
        for col in ("item_features", "mtl_scores", "mu_bp", "lower_b", "upper_b", "action"):
            for rowid, v in db.execute(f"SELECT rowid, {col} FROM shown").fetchall():
                db.execute(f"UPDATE shown SET {col} = ? WHERE rowid = ?", (json.dumps(decode_vector(v)), rowid))
        for col in ("user_profile", "user_history", "context"):
            for rowid, v in db.execute(f"SELECT rowid, {col} FROM requests").fetchall():
                db.execute(f"UPDATE requests SET {col} = ? WHERE rowid = ?", (json.dumps(decode_vector(v)), rowid))
    assert export_logs(log_dir, tmp_path / "out", SPEC)["rows"] == 10
    assert read_logs(tmp_path / "out").columns["mtl_scores"].shape == (10, 5)


def test_listening_socket_gets_tcp_nodelay():
    """The multi-worker socket: accepted connections must get TCP_NODELAY (uvicorn's own socket has
    proto 0, so asyncio skipped it and Nagle + delayed ACK held responses ~40 ms)."""
    import asyncio
    import socket

    from rlmtf.serve.run import listening_socket

    async def nodelay_of(sock: socket.socket) -> int:
        got: asyncio.Future = asyncio.get_running_loop().create_future()

        class P(asyncio.Protocol):
            def connection_made(self, transport):
                s = transport.get_extra_info("socket")
                got.set_result(s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
                transport.close()

        server = await asyncio.get_running_loop().create_server(P, sock=sock)
        _, w = await asyncio.open_connection(*sock.getsockname()[:2])
        value = await asyncio.wait_for(got, 10)
        w.close()
        server.close()
        return value

    assert asyncio.run(nodelay_of(listening_socket("127.0.0.1", 0))) != 0
    like_uvicorn = socket.socket(family=socket.AF_INET)  # what uvicorn's Config.bind_socket makes
    like_uvicorn.bind(("127.0.0.1", 0))
    assert asyncio.run(nodelay_of(like_uvicorn)) == 0


# --- per-user exploration bounds --------------------------------------------------------------------------

ALICE = ([0.0] * 10, [0.3] * 10)  # only upwards
BOB = (-0.02, 0.02)  # a narrow box, given as numbers


def _bounds_file(tmp_path, users=None):
    users = users or {"alice": {"lower_b": ALICE[0], "upper_b": ALICE[1]},
                      "bob": {"lower_b": BOB[0], "upper_b": BOB[1]}}
    path = tmp_path / "bounds.json"
    path.write_text(json.dumps({"users": users}))
    return path


def _box(user):
    if user == "alice":
        return np.asarray(ALICE[0]), np.asarray(ALICE[1])
    if user == "bob":
        return np.full(10, BOB[0]), np.full(10, BOB[1])
    return np.full(10, -0.15), np.full(10, 0.15)


def test_per_user_bounds_served_logged_exported(log_dir, tmp_path):
    base = np.asarray(baseline_policy().action, dtype=np.float64)
    users = ("alice", "bob", "carol")  # carol is not in the file: the default box
    with TestClient(create_app(feature_spec=SPEC, log_dir=log_dir, explore_fraction=1.0, seed=2,
                               bounds=_bounds_file(tmp_path))) as c:
        assert len(c.app.state.user_bounds) == 2
        for user in users:
            for t in range(4):
                out = c.post("/v1/rank", json=rank_body(user=user, session="s", seed=t)).json()
                assert out["explored"] is True
                lo, hi = _box(user)
                for it in out["items"]:
                    a = np.asarray(it["action"])
                    assert np.all(a >= np.clip(base + lo, -1, 1) - 1e-6)
                    assert np.all(a <= np.clip(base + hi, -1, 1) + 1e-6)
                if user == "alice":  # noise only upwards: never below mu_bp
                    assert np.all(np.asarray(out["items"][0]["action"]) >= base - 1e-6)
    with _db(log_dir) as db:
        rows = db.execute("SELECT r.user_id, s.mu_bp, s.lower_b, s.upper_b, s.action FROM shown s "
                          "JOIN requests r USING (request_id)").fetchall()
    assert len(rows) == 3 * 4 * 5
    for user, *vecs in rows:
        mu, lo, hi, act = (np.asarray(decode_vector(v), dtype=np.float64) for v in vecs)
        want_lo, want_hi = _box(user)
        np.testing.assert_allclose(lo, want_lo, atol=1e-6)
        np.testing.assert_allclose(hi, want_hi, atol=1e-6)
        assert np.all(act >= np.clip(mu + lo, -1, 1) - 1e-6) and np.all(act <= np.clip(mu + hi, -1, 1) + 1e-6)
    export_logs(log_dir, tmp_path / "out", SPEC)
    col = read_logs(tmp_path / "out").columns
    for user in users:
        m = col["user_id"] == stable_id(user)
        assert m.sum() == 4 * 5
        want_lo, want_hi = _box(user)
        np.testing.assert_allclose(col["lower_b"][m], np.broadcast_to(want_lo, (m.sum(), 10)), atol=1e-6)
        np.testing.assert_allclose(col["upper_b"][m], np.broadcast_to(want_hi, (m.sum(), 10)), atol=1e-6)
        d = col["action"][m] - col["mu_bp"][m]
        assert np.all(d >= want_lo - 1e-5) and np.all(d <= want_hi + 1e-5)  # clipping only shrinks |noise|


def test_per_user_bounds_do_not_change_who_explores(log_dir, tmp_path):
    bounds = _bounds_file(tmp_path)
    with TestClient(create_app(feature_spec=SPEC, log_dir=log_dir, explore_fraction=0.0, bounds=bounds)) as c:
        out = c.post("/v1/rank", json=rank_body(user="alice")).json()
        assert out["explored"] is False
    with _db(log_dir) as db:
        lo, hi = db.execute("SELECT lower_b, upper_b FROM shown LIMIT 1").fetchone()
    assert decode_vector(lo) == [0.0] * 10 == decode_vector(hi)


def test_per_user_bounds_item_level_policy(log_dir, tmp_path, trained_policy):
    """An item-level policy: noise per user-item pair, each inside the user's own box."""
    with TestClient(create_app(str(trained_policy), feature_spec=SPEC, log_dir=log_dir, explore_fraction=1.0,
                               bounds=_bounds_file(tmp_path))) as c:
        out = c.post("/v1/rank", json=rank_body(user="alice", n=20)).json()
        assert out["explored"] is True
    with _db(log_dir) as db:
        rows = db.execute("SELECT mu_bp, lower_b, upper_b, action FROM shown").fetchall()
    acts = []
    for vecs in rows:
        mu, lo, hi, act = (np.asarray(decode_vector(v), dtype=np.float64) for v in vecs)
        np.testing.assert_allclose(lo, ALICE[0], atol=1e-6)
        np.testing.assert_allclose(hi, ALICE[1], atol=1e-6)
        assert np.all(act >= np.clip(mu, -1, 1) - 1e-6) and np.all(act <= np.clip(mu + 0.3, -1, 1) + 1e-6)
        acts.append(act - mu)
    assert np.abs(np.asarray(acts) - acts[0]).max() > 1e-4  # a draw per user-item pair


def test_bounds_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from rlmtf.serve.bounds import load_user_bounds

    path = tmp_path / "b.parquet"
    pq.write_table(pa.table({"user_id": ["u1", "u2"], "lower_b": [[-0.1] * 10, [0.0] * 10],
                             "upper_b": [[0.1] * 10, [0.05] * 10]}), path)
    b = load_user_bounds(path)
    assert len(b) == 2 and b.get("u3") is None
    np.testing.assert_allclose(b.get("u2")[1], 0.05, atol=1e-7)
    pq.write_table(pa.table({"user_id": ["u1"], "lower_b": [-0.1]}), tmp_path / "bad.parquet")
    with pytest.raises(ValueError, match="upper_b"):
        load_user_bounds(tmp_path / "bad.parquet")


BAD_BOUNDS = [
    ({"users": {"u1": {"lower_b": [0.0] * 9, "upper_b": 0.1}}}, "u1.*lower_b.*10 numbers"),
    ({"users": {"u1": {"lower_b": 0.2, "upper_b": 0.1}}}, "u1.*lower_b > upper_b in dimension 0"),
    ({"users": {"u1": {"lower_b": [0.0] * 9 + [float("nan")], "upper_b": 0.1}}}, r"u1.*lower_b\[9\].*finite"),
    ({"users": {"u1": {"lower_b": -0.1}}}, "u1.*exactly lower_b and upper_b"),
    ({"users": {"u1": {"lower_b": True, "upper_b": 0.1}}}, "u1.*lower_b"),
    ({"u1": {"lower_b": -0.1, "upper_b": 0.1}}, '"users"'),
    ([1, 2], '"users"'),
]


@pytest.mark.parametrize("doc,match", BAD_BOUNDS)
def test_bad_bounds_files_are_refused(tmp_path, doc, match):
    from rlmtf.serve.bounds import load_user_bounds

    path = tmp_path / "bounds.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=match):
        load_user_bounds(path)
    with pytest.raises(ValueError, match="bounds.json"):
        create_app(feature_spec=SPEC, log_dir=tmp_path / "log", bounds=path)


def test_missing_bounds_file(tmp_path):
    with pytest.raises(ValueError, match="no such bounds file"):
        create_app(feature_spec=SPEC, log_dir=tmp_path / "log", bounds=tmp_path / "nope.json")


def test_openapi_documents_the_bodies_the_handlers_parse(client):
    doc = client.get("/openapi.json").json()
    for path, model in (("/v1/rank", "RankRequest"), ("/v1/feedback", "FeedbackRequest")):
        ref = doc["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        assert ref == f"#/components/schemas/{model}"
    assert "Candidate" in doc["components"]["schemas"]


def test_huge_mtl_scores_rank_without_overflow(log_dir, tmp_path):
    """A fused score beyond a double's range is capped in the response instead of failing the request:
    powers of 2 on five scores near float32's maximum give log scores near 887 > log(max double) = 709.8."""
    (tmp_path / "steep.json").write_text(json.dumps({"kind": "fixed", "action": [1.0] * 10}))
    body = rank_body(n=4, k=4)
    for j, cand in enumerate(body["candidates"]):
        cand["mtl_scores"] = {t: 1e38 * (j + 1) / 4 for t in SPEC.mtl_tasks}
    with TestClient(create_app(str(tmp_path / "steep.json"), feature_spec=SPEC, log_dir=log_dir)) as c:
        r = c.post("/v1/rank", json=body)
    assert r.status_code == 200, r.text
    scores = [it["score"] for it in r.json()["items"]]
    assert all(math.isfinite(s) and s > 1e307 for s in scores), scores


# --- the features of the served policy ----------------------------------------------------------------------

#: Features of another deployment (as a policy trained on KuaiRand-Pure brings its own)
OTHER = FeatureSpec(user_profile=FeatureGroup((("age", 1), ("tastes", 3))),
                    user_history=FeatureGroup((("long_view_rate", 1),)), context=FeatureGroup((("hour", 1),)),
                    item_features=FeatureGroup((("log_duration", 1), ("tags", 2))))


@pytest.fixture(scope="module")
def other_run(tmp_path_factory):
    """A run directory (``policy/`` inside) of an untrained Enhanced-State RL policy on the OTHER features."""
    run = tmp_path_factory.mktemp("other") / "run"
    EnhancedStateRL(OTHER, ESRLConfig(hidden=(8, 8), embed_dim=4, ensemble_size=2)).save_policy(run / "policy")
    return run


def test_a_trained_policy_is_served_with_its_own_features(other_run, log_dir, tmp_path):
    with TestClient(create_app(str(other_run), log_dir=log_dir)) as c:  # a run directory: its policy/
        s = c.get("/v1/schema").json()
        assert s["user_features"] == {"age": 1, "tastes": 3, "long_view_rate": 1} and s["context"] == {"hour": 1}
        assert s["item_features"] == {"log_duration": 1, "tags": 2} and s["policy_level"] == "item"
        assert s["policy_version"] == policy_version(str(other_run / "policy"))  # a run and its policy/: one version
        out = c.post("/v1/rank", json=rank_body(n=7, spec=OTHER)).json()
        assert len(out["items"]) == 5
        assert c.post("/v1/feedback", json={"request_id": out["request_id"], "item_id": out["items"][0]["item_id"],
                                            "behaviours": {"valid": 1}}).status_code == 200
        assert c.post("/v1/rank", json=rank_body(n=7)).status_code == 422  # the simulator's features
    # the export reads the features from the log
    export_logs(log_dir, tmp_path / "out")
    data = read_logs(tmp_path / "out")
    assert data.meta.feature_spec == OTHER and len(data) == 5 and data.columns["valid"].sum() == 1


def test_a_policy_without_features_gets_the_given_ones(log_dir):
    with TestClient(create_app("baseline", feature_spec=OTHER, log_dir=log_dir)) as c:
        assert c.get("/v1/schema").json()["user_features"] == {"age": 1, "tastes": 3, "long_view_rate": 1}
        assert c.post("/v1/rank", json=rank_body(spec=OTHER)).status_code == 200


def test_other_features_are_refused_at_start_and_on_reload(client, other_run, trained_policy, monkeypatch, tmp_path):
    with pytest.raises(PolicyLoadError, match=f"other features.*user_profile 4 vs {SPEC.user_profile.dim} values"):
        create_app(str(other_run), feature_spec=SPEC, log_dir=tmp_path / "log1")
    monkeypatch.setenv("RLMTF_ADMIN_TOKEN", TOKEN)
    r = _reload(client, other_run)  # the service has the simulator's features
    assert r.status_code == 422
    msg = r.json()["detail"][0]["msg"]
    assert "other features" in msg and "user_profile 4 vs" in msg
    assert client.get("/v1/schema").json()["policy_version"] == "baseline"
    assert client.post("/v1/rank", json=rank_body()).status_code == 200
    # a policy on the service's features (and a built-in, which has none) still reloads
    assert _reload(client, trained_policy).status_code == 200
    assert _reload(client, "baseline").status_code == 200
    with TestClient(create_app(str(other_run), log_dir=tmp_path / "log2", models_dir=tmp_path.parent)) as c:
        assert _reload(c, "baseline").status_code == 200  # served with the OTHER features
        assert c.post("/v1/rank", json=rank_body(spec=OTHER)).status_code == 200
        assert _reload(c, trained_policy).status_code == 422


def test_a_log_keeps_the_features_it_was_written_with(other_run, log_dir):
    with TestClient(create_app("baseline", log_dir=log_dir)) as c:
        assert c.post("/v1/rank", json=rank_body()).status_code == 200
    with pytest.raises(ValueError, match="other features.*another log directory"):
        create_app(str(other_run), log_dir=log_dir)
    with TestClient(create_app("baseline", log_dir=log_dir)) as c:  # the same features: it opens
        assert c.get("/healthz").status_code == 200


def test_export_without_a_recorded_spec_needs_one(log_dir, tmp_path):
    with TestClient(create_app("baseline", log_dir=log_dir)) as c:
        assert c.post("/v1/rank", json=rank_body()).status_code == 200
    with _db(log_dir) as db:
        db.execute("DELETE FROM meta WHERE key = 'feature_spec'")
    with pytest.raises(ValueError, match="records no feature spec"):
        export_logs(log_dir, tmp_path / "out")
    assert export_logs(log_dir, tmp_path / "out", SPEC)["rows"] == 5


def test_spec_difference_names_what_differs():
    renamed = dataclasses.replace(SPEC, context=FeatureGroup((("hour", 1), *SPEC.context.fields[1:])))
    assert spec_difference(renamed, SPEC) == "context 'hour' vs 'hour_sin'"
    assert spec_difference(OTHER, SPEC).startswith(f"user_profile 4 vs {SPEC.user_profile.dim} values; ")
    assert spec_difference(SPEC, SPEC) == ""


def test_loop_refuses_a_service_with_other_features(other_run, log_dir):
    from rlmtf.serve.loop import RemoteRanker

    with TestClient(create_app(str(other_run), log_dir=log_dir)) as c:
        with pytest.raises(ValueError, match="accepts other user_features, context, item_features"):
            RemoteRanker("http://testserver", SPEC, client=c).check_schema()
        RemoteRanker("http://testserver", OTHER, client=c).check_schema()

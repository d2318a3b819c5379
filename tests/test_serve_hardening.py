"""A ranking service that cannot be poisoned or exhausted (docs/bad-input.md; issue 16, problems 3 to 6):
the OpenAPI contract is what the service answers, values are checked at the door so the export never
fails on an accepted one, parsing is strict, retries are idempotent, /metrics labels only known routes,
the edge has timeouts and limits, and admin checks its token before anything else."""

from __future__ import annotations

import asyncio
import json
import os

import pytest
from fastapi.testclient import TestClient
from test_serve import TOKEN, _db, rank_body

from rlmtf.envs.sim.config import SimConfig
from rlmtf.envs.sim.world import feature_spec
from rlmtf.serve import create_app, export_logs
from rlmtf.serve.store import DB_NAME, ServeStore

SPEC = feature_spec(SimConfig())


@pytest.fixture
def log_dir(tmp_path):
    return tmp_path / "log"


@pytest.fixture
def client(log_dir, tmp_path):
    (tmp_path / "models").mkdir()
    with TestClient(create_app("baseline", feature_spec=SPEC, log_dir=log_dir, models_dir=tmp_path / "models",
                               max_string_length=64)) as c:
        yield c


def _shown(client, **kw):
    out = client.post("/v1/rank", json=rank_body(**kw)).json()
    return out["request_id"], out["items"][0]["item_id"]


def _feedback(client, request_id, item_id, **fields):
    return client.post("/v1/feedback", json={"request_id": request_id, "item_id": item_id, **fields})


def _locs(r):
    return [tuple(d["loc"]) for d in r.json()["detail"]]


# --- problem 3: the documented contract -------------------------------------------------------------------

def test_openapi_documents_every_status_with_its_body(client):
    doc = client.get("/openapi.json").json()
    paths = doc["paths"]
    want = {"/v1/rank": {"200", "408", "413", "415", "422", "503"},
            "/v1/feedback": {"200", "404", "408", "413", "415", "422", "503"},
            "/v1/admin/reload": {"200", "401", "403", "408", "413", "415", "422"}}
    for path, statuses in want.items():
        responses = paths[path]["post"]["responses"]
        assert statuses <= set(responses), (path, sorted(responses))
        for status in statuses:
            assert "$ref" in json.dumps(responses[status]["content"]), (path, status)
        assert paths[path]["post"]["requestBody"]["required"] is True
    schemas = doc["components"]["schemas"]
    assert schemas["ReloadErrorBody"]["properties"]["detail"]["type"] == "array"


def test_reload_422_has_the_documented_list_shape(client, monkeypatch):
    monkeypatch.setenv("RLMTF_ADMIN_TOKEN", TOKEN)
    r = client.post("/v1/admin/reload", json={"policy": "nope"}, headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["body", "policy"] and r.json()["policy_version"] == "baseline"


def test_feedback_404_and_422_bodies_match_the_schema(client):
    r = _feedback(client, "unknown", "i0")
    assert r.status_code == 404 and isinstance(r.json()["detail"], str)
    r = client.post("/v1/rank", json={"user_id": "u"})
    assert r.status_code == 422 and all({"loc", "msg", "type"} <= set(d) for d in r.json()["detail"])


# --- problem 4: one accepted feedback never breaks the export ---------------------------------------------

@pytest.mark.parametrize("beh", [{"watch_time": 1e39}, {"watch_time": 2e38}, {"watch_time": 86400.5},
                                 {"watch_ratio": 1e6}, {"like": 0.5}, {"valid": 2}])
def test_feedback_values_out_of_range_are_refused_at_the_door(client, beh):
    rid, item = _shown(client)
    r = _feedback(client, rid, item, behaviours=beh)
    assert r.status_code == 422, r.text
    assert _locs(r)[0] == ("body", "behaviours", next(iter(beh)))


def test_the_watch_time_cap_is_a_setting(log_dir):
    with TestClient(create_app(feature_spec=SPEC, log_dir=log_dir, max_watch_time_s=10.0)) as c:
        rid, item = _shown(c)
        assert _feedback(c, rid, item, behaviours={"watch_time": 10.0}).status_code == 200
        assert _feedback(c, rid, item, behaviours={"watch_time": 10.5}).status_code == 422


def test_the_export_never_fails_on_what_the_service_accepted(client, log_dir, tmp_path):
    rid, item = _shown(client)
    for _ in range(3):  # at the cap, summed: still a number float32 holds
        assert _feedback(client, rid, item, behaviours={"watch_time": 86400.0, "valid": 1}).status_code == 200
    summary = export_logs(log_dir, tmp_path / "out", SPEC)
    assert summary["rows"] == 5 and summary["skipped_feedback"] == 0


def test_the_export_skips_and_counts_what_an_old_log_holds(log_dir, tmp_path):
    with TestClient(create_app(feature_spec=SPEC, log_dir=log_dir)) as c:
        rid, item = _shown(c)
        rid2, item2 = _shown(c, user="u2")
    store = ServeStore(log_dir, SPEC.to_json())  # written as the service did before it checked values
    store.log_feedback(event_id="old1", request_id=rid, item_id=item, behaviours={"watch_time": 1e39},
                       session_end=False)
    store.log_feedback(event_id="old2", request_id=rid, item_id=item, behaviours={"like": 0.5}, session_end=False)
    for i in range(2):
        store.log_feedback(event_id=f"big{i}", request_id=rid2, item_id=item2, behaviours={"watch_time": 2e38},
                           session_end=False)
    store.log_feedback(event_id="fine", request_id=rid2, item_id="i0", behaviours={"like": 1}, session_end=False)
    store.close()
    summary = export_logs(log_dir, tmp_path / "out", SPEC)
    assert summary["rows"] == 10 and summary["skipped_feedback"] == 3


# --- problem 6: strict parsing and idempotent retries -----------------------------------------------------

@pytest.mark.parametrize("k", ["3", True, 3.0])
def test_k_must_be_a_json_integer(client, k):
    body = rank_body()
    body["k"] = k
    r = client.post("/v1/rank", json=body)
    assert r.status_code == 422 and ("body", "k") in _locs(r)


@pytest.mark.parametrize("fields", [{"behaviours": {"like": "1"}}, {"behaviours": {"like": True}},
                                    {"session_end": "yes"}, {"session_end": 1}])
def test_feedback_types_are_strict(client, fields):
    rid, item = _shown(client)
    r = _feedback(client, rid, item, **fields)
    assert r.status_code == 422, r.text


def test_a_key_given_twice_is_refused(client):
    rid, item = _shown(client)
    raw = (f'{{"request_id": "{rid}", "item_id": "{item}", "behaviours": {{"like": 1, "like": 0}}}}').encode()
    r = client.post("/v1/feedback", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["detail"][0]["type"] == "duplicate_key"
    body = json.dumps(rank_body())
    r = client.post("/v1/rank", content=body[:-1] + ', "k": 2}', headers={"content-type": "application/json"})
    assert r.status_code == 422


def test_content_type_must_be_json(client):
    body = json.dumps(rank_body())
    assert client.post("/v1/rank", content=body, headers={"content-type": "text/plain"}).status_code == 415
    assert client.post("/v1/rank", content=body).status_code == 415
    ok = client.post("/v1/rank", content=body, headers={"content-type": "application/json; charset=utf-8"})
    assert ok.status_code == 200


def test_ids_have_a_length_limit(client):
    r = client.post("/v1/rank", json=rank_body(user="u" * 65))
    assert r.status_code == 422 and _locs(r)[0] == ("body", "user_id")
    body = rank_body()
    body["candidates"][3]["item_id"] = "x" * 100
    r = client.post("/v1/rank", json=body)
    assert r.status_code == 422 and _locs(r)[0] == ("body", "candidates", 3, "item_id")


def test_a_retried_rank_with_its_request_key_is_logged_once(client, log_dir):
    body = {**rank_body(), "request_key": "client-attempt-1"}
    first = client.post("/v1/rank", json=body)
    again = client.post("/v1/rank", json=body)
    assert first.status_code == again.status_code == 200
    assert again.json() == first.json()
    other = client.post("/v1/rank", json={**body, "request_key": "client-attempt-2"}).json()
    assert other["request_id"] != first.json()["request_id"]
    with _db(log_dir) as db:
        assert db.execute("SELECT COUNT(*) FROM requests").fetchone()[0] == 2
        assert db.execute("SELECT COUNT(*) FROM shown").fetchone()[0] == 10


def test_a_log_from_before_the_request_key_is_upgraded(log_dir):
    import sqlite3

    with TestClient(create_app(feature_spec=SPEC, log_dir=log_dir)) as c:
        assert c.post("/v1/rank", json=rank_body()).status_code == 200
    con = sqlite3.connect(log_dir / DB_NAME)
    con.execute("DROP INDEX requests_key")
    con.execute("ALTER TABLE requests DROP COLUMN request_key")
    con.commit()
    con.close()
    with TestClient(create_app(feature_spec=SPEC, log_dir=log_dir)) as c:
        body = {**rank_body(), "request_key": "k1"}
        assert c.post("/v1/rank", json=body).json() == c.post("/v1/rank", json=body).json()


# --- problem 5: metrics, the edge, admin ------------------------------------------------------------------

def test_metrics_label_only_known_routes(client):
    client.get("/x%22%7D%20999%0Afake_metric%7Bx%3D%221%22%7D%2042")
    for i in range(50):
        client.get(f"/unknown/{i}")
    text = client.get("/metrics").text
    assert "fake_metric" not in text
    assert 'rlmtf_requests_total{path="other",status="404"} 51.0' in text
    assert sum(line.startswith("rlmtf_requests_total{") for line in text.splitlines()) <= 3


def test_admin_checks_the_token_before_the_body(client, monkeypatch):
    monkeypatch.setenv("RLMTF_ADMIN_TOKEN", TOKEN)
    r = client.post("/v1/admin/reload", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 401 and "loc" not in r.text
    r = client.post("/v1/admin/reload", json={"nonsense": 1}, headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 403


def test_reload_loads_only_from_the_models_dir_and_says_the_same_for_missing_and_unreadable(
        client, monkeypatch, tmp_path):
    monkeypatch.setenv("RLMTF_ADMIN_TOKEN", TOKEN)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    secret = tmp_path / "secret.json"
    secret.write_text("not json at all")
    unreadable = tmp_path / "models" / "locked.json"  # unreadable for anyone but root
    unreadable.write_text('{"kind": "fixed", "action": [0, 0, 0, 0, 0, 0, 0, 0, 0, 0]}')
    unreadable.chmod(0)
    (tmp_path / "models" / "link.json").symlink_to(secret)  # a way out of the directory
    names = ["/etc/shadow", str(secret), "../secret.json", "missing.json", "link.json", "a\x00b"]
    if os.geteuid() != 0:
        names.append("locked.json")
    msgs = set()
    for name in names:
        r = client.post("/v1/admin/reload", json={"policy": name}, headers=auth)
        assert r.status_code == 422
        msgs.add(r.json()["detail"][0]["msg"].replace(repr(name), "NAME"))
    unreadable.chmod(0o600)
    assert len(msgs) == 1 and "models directory" in msgs.pop()
    fixed = tmp_path / "models" / "fixed.json"
    fixed.write_text('{"kind": "fixed", "action": [0, 0, 0, 0, 0, 0, 0, 0, 0, 0]}')
    r = client.post("/v1/admin/reload", json={"policy": "fixed.json"}, headers=auth)
    assert r.status_code == 200, r.text


def _asgi(app, messages, *, path="/v1/rank", headers=()):
    """Drive the ASGI app directly with ``messages`` (dicts; a float: sleep that long first)."""
    sent = []
    queue = list(messages)

    async def receive():
        while queue and isinstance(queue[0], float):
            await asyncio.sleep(queue.pop(0))
        if queue:
            return queue.pop(0)
        await asyncio.sleep(3600)

    async def send(msg):
        sent.append(msg)

    scope = {"type": "http", "method": "POST", "path": path, "raw_path": path.encode(), "query_string": b"",
             "headers": [(b"content-type", b"application/json"), *headers], "client": ("127.0.0.1", 5),
             "server": ("127.0.0.1", 80), "scheme": "http", "http_version": "1.1", "root_path": ""}
    asyncio.run(asyncio.wait_for(app(scope, receive, send), 10))
    return sent


def test_a_body_that_does_not_arrive_in_time_gets_408(log_dir):
    app = create_app(feature_spec=SPEC, log_dir=log_dir, body_timeout_s=0.2)
    sent = _asgi(app, [{"type": "http.request", "body": b'{"user_id": ', "more_body": True}, 5.0])
    assert sent[0]["status"] == 408
    assert 'status="408"' in app.state.metrics.render("baseline")
    app.state.store.close()


def test_a_client_disconnect_is_one_line_not_a_500(log_dir, caplog):
    app = create_app(feature_spec=SPEC, log_dir=log_dir)
    with caplog.at_level("INFO", logger="rlmtf.serve"):
        sent = _asgi(app, [{"type": "http.request", "body": b"{", "more_body": True}, {"type": "http.disconnect"}])
    assert sent == []
    text = app.state.metrics.render("baseline")
    assert 'status="499"' in text and 'status="500"' not in text
    assert [r.getMessage() for r in caplog.records if "disconnected" in r.getMessage()]
    assert not any(r.exc_info for r in caplog.records)
    app.state.store.close()


def test_an_oversized_streamed_body_to_reload_gets_413(log_dir, monkeypatch):
    monkeypatch.setenv("RLMTF_ADMIN_TOKEN", TOKEN)
    app = create_app(feature_spec=SPEC, log_dir=log_dir, max_body_bytes=1000)
    chunks = [{"type": "http.request", "body": b"x" * 600, "more_body": True},
              {"type": "http.request", "body": b"x" * 600, "more_body": False}]
    sent = _asgi(app, chunks, path="/v1/admin/reload", headers=[(b"authorization", f"Bearer {TOKEN}".encode())])
    assert sent[0]["status"] == 413
    app.state.store.close()

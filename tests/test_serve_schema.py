"""Schema-based fuzzing of the ranking service (schemathesis): every case generated from /openapi.json
gets an answer the schema documents, with the body model it documents, and never a server error
(issue 16, problem 3). Bounded: a few dozen cases per operation, well under a minute in all.

One check is left out: ``positive_data_acceptance`` (a body the schema allows must get a 2xx). JSON Schema
cannot say what the service checks across fields, so a schema-valid body can still be refused with a
documented 404/422: the feature names of the served spec, ``k`` at most the number of candidates, unique
item ids, a feedback's request being logged, a reload's policy existing.

(schemathesis's own pytest plugin does not run under this pytest; its strategies are driven with
hypothesis directly.)"""

from __future__ import annotations

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402  (after the skip: both come with schemathesis)
from schemathesis.specs.openapi.checks import positive_data_acceptance  # noqa: E402

from rlmtf.envs.sim.config import SimConfig  # noqa: E402
from rlmtf.envs.sim.world import feature_spec  # noqa: E402
from rlmtf.serve import create_app  # noqa: E402

OPERATIONS = [("GET", "/healthz"), ("GET", "/v1/schema"), ("GET", "/metrics"), ("POST", "/v1/rank"),
              ("POST", "/v1/feedback"), ("POST", "/v1/admin/reload")]


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    (root / "models").mkdir()
    app = create_app("baseline", feature_spec=feature_spec(SimConfig()), log_dir=root / "log",
                     models_dir=root / "models", durability="process")

    async def without_lifespan(scope, receive, send):  # the client runs a lifespan per call: keep the store open
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        await app(scope, receive, send)

    yield schemathesis.openapi.from_asgi("/openapi.json", without_lifespan)
    app.state.store.close()


def test_the_schema_lists_every_operation(api):
    found = {(r.ok().method.upper(), r.ok().path) for r in api.get_all_operations()}
    assert set(OPERATIONS) <= found


@pytest.mark.parametrize(("method", "path"), OPERATIONS)
def test_every_answer_is_documented(api, method, path, monkeypatch):
    monkeypatch.setenv("RLMTF_ADMIN_TOKEN", "fuzz-token")
    op = api[path][method]

    @given(case=op.as_strategy())
    @settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def run(case):
        case.call_and_validate(excluded_checks=[positive_data_acceptance])

    run()

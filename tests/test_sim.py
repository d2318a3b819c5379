"""The simulator (``docs/design.md#the-simulator``): determinism, common random numbers, the logged-row contract
(``docs/design.md#logged-data``) and one sanity check per mechanism, each of which fails if the mechanism is missing.

Sanity checks compare two runs on the same users and seed (common random numbers, so the comparison
is paired per user) and ask for a margin of several standard errors.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap

import numpy as np
import pytest
from scipy.special import logit

from rlmtf.core.fusion import ACTION_DIM, N_TASKS
from rlmtf.core.reward import item_reward
from rlmtf.data import read_logs
from rlmtf.envs.collect import simulate_to_parquet
from rlmtf.envs.engine import RunResult
from rlmtf.envs.sim import SimConfig, Simulator
from rlmtf.envs.sim.config import ItemConfig, MTLConfig, UserConfig
from rlmtf.eval.offline import evaluate_gauc
from rlmtf.policy import FixedPolicy, RandomPolicy, UniformExploration, baseline_policy
from rlmtf.policy.fixed import BASELINE_BIAS, oracle_policy, valid_only_policy

RESULT_ARRAYS = ("user_ids", "days", "valid", "watch_time", "sessions", "requests", "reward", "items",
                 "clickbait_shown")
LIST_COLUMNS = ("user_profile", "user_history", "context", "item_features", "mtl_scores", "mu_bp", "lower_b",
                "upper_b", "action", "true_scores")
ATOL = 1e-6  # float32 rounding of clip(mu + eps) - mu


def small_config(**kw) -> SimConfig:
    return dataclasses.replace(SimConfig(), n_users=400, n_items=2000, **kw)


class Sink:
    """Collects what ``Simulator.run`` logs; ``columns()`` concatenates it."""

    def __init__(self) -> None:
        self.parts: list[tuple[int, dict[str, np.ndarray]]] = []

    def __call__(self, day: int, cols: dict[str, np.ndarray]) -> None:
        self.parts.append((day, {k: v.copy() for k, v in cols.items()}))

    def columns(self) -> dict[str, np.ndarray]:
        keys = self.parts[0][1].keys()
        return {k: np.concatenate([p[k] for _, p in self.parts]) for k in keys}


def run_logged(sim: Simulator, policy, **kw) -> tuple[RunResult, dict[str, np.ndarray]]:
    sink = Sink()
    result = sim.run(policy, sink=sink, **kw)
    return result, sink.columns()


def sort_rows(cols: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    order = np.lexsort((cols["position"], cols["t"], cols["session_id"]))
    return {k: v[order] for k, v in cols.items()}


def assert_results_equal(a: RunResult, b: RunResult, session_order_matters: bool = True) -> None:
    for name in RESULT_ARRAYS:
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    assert a.n_sessions == b.n_sessions and a.n_rows == b.n_rows
    la, lb = np.concatenate(a.session_lengths), np.concatenate(b.session_lengths)
    if not session_order_matters:
        la, lb = np.sort(la), np.sort(lb)
    np.testing.assert_array_equal(la, lb)


def assert_columns_equal(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def paired(control: np.ndarray, treatment: np.ndarray) -> tuple[float, float]:
    """Mean of treatment - control and its standard error (same users in the same order)."""
    d = np.asarray(treatment, float) - np.asarray(control, float)
    return float(d.mean()), float(d.std(ddof=1) / np.sqrt(d.size))


def sessions_per_day(r: RunResult) -> np.ndarray:
    return r.sessions.sum(1) / r.sessions.shape[1]


def requests_per_session(r: RunResult) -> np.ndarray:
    s = r.sessions.sum(1)
    return r.requests.sum(1) / np.maximum(s, 1)


# --- fixtures -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_sim() -> Simulator:
    return Simulator(small_config())


@pytest.fixture(scope="module")
def explore_request(small_sim):
    """Baseline + uniform exploration per request, one day, logged."""
    pol = UniformExploration(baseline_policy(), -0.15, 0.15, per="request", seed=7)
    return run_logged(small_sim, pol, seed=3, days=1)


# a fixed policy close to the edges of the action space, so that exploration gets clipped
EDGE_ACTION = np.array([0.95, -0.95, 0.0, -0.6, -0.7, -0.8, 0.9, -0.8, -0.92, -0.92], dtype=np.float32)


@pytest.fixture(scope="module")
def explore_item(small_sim):
    """An edge policy + uniform exploration per item, one day, logged."""
    pol = UniformExploration(FixedPolicy(EDGE_ACTION, name="edge"), -0.15, 0.15, per="item", seed=7)
    return run_logged(small_sim, pol, seed=3, days=1)


POP_USERS = 3000
POP_DAYS = 2


@pytest.fixture(scope="module")
def pop_cfg() -> SimConfig:
    return dataclasses.replace(SimConfig(), n_users=POP_USERS)


@pytest.fixture(scope="module")
def pop_sim(pop_cfg) -> Simulator:
    return Simulator(pop_cfg)


@pytest.fixture(scope="module")
def baseline_run(pop_sim) -> RunResult:
    return pop_sim.run(baseline_policy(), seed=11, days=POP_DAYS)


@pytest.fixture(scope="module")
def valid_only_run(pop_sim) -> RunResult:
    return pop_sim.run(valid_only_policy(), seed=11, days=POP_DAYS)


@pytest.fixture(scope="module")
def test_logs(pop_sim, tmp_path_factory):
    """One day of the 3000 users under the baseline (no exploration), written and read back."""
    out = tmp_path_factory.mktemp("sim") / "test"
    simulate_to_parquet(pop_sim, baseline_policy(), out, seed=21, days=1)
    return read_logs(out)


# --- determinism --------------------------------------------------------------------------------------


def test_same_seed_gives_identical_results_and_logs(small_sim, explore_request):
    pol = UniformExploration(baseline_policy(), -0.15, 0.15, per="request", seed=7)
    r1, c1 = explore_request
    r2, c2 = run_logged(Simulator(small_config()), pol, seed=3, days=1)  # a fresh simulator, same world
    assert_results_equal(r1, r2)
    assert_columns_equal(c1, c2)
    assert r1.n_sessions > 100 and len(c1["session_id"]) == r1.n_rows


def test_different_seed_differs(small_sim, explore_request):
    r1, c1 = explore_request
    pol = UniformExploration(baseline_policy(), -0.15, 0.15, per="request", seed=7)
    r2, c2 = run_logged(small_sim, pol, seed=4, days=1)
    assert not np.array_equal(r1.valid, r2.valid)
    assert not np.array_equal(r1.sessions, r2.sessions)
    n = min(len(c1["item_id"]), len(c2["item_id"]))
    assert (c1["item_id"][:n] != c2["item_id"][:n]).mean() > 0.5


def test_results_do_not_depend_on_max_concurrent_sessions():
    pol = UniformExploration(baseline_policy(), -0.15, 0.15, per="request", seed=1)
    runs = [run_logged(Simulator(small_config(max_concurrent_sessions=m)), pol, seed=5, days=2) for m in (64, 2048)]
    (ra, ca), (rb, cb) = runs
    assert_results_equal(ra, rb, session_order_matters=False)
    assert_columns_equal(sort_rows(ca), sort_rows(cb))
    # with 64 slots the 400 users cannot all be served at once, so batching really differed
    assert ra.n_sessions > 64 * 2


def test_common_random_numbers_across_user_subsets(small_sim):
    pol = baseline_policy()
    ra, ca = run_logged(small_sim, pol, seed=9, days=2, users=np.arange(0, 300))
    rb, cb = run_logged(small_sim, pol, seed=9, days=2, users=np.arange(150, 400))
    shared = np.arange(150, 300)
    ia, ib = shared - 0, shared - 150
    for name in ("valid", "watch_time", "sessions", "requests", "reward", "items", "clickbait_shown"):
        np.testing.assert_array_equal(getattr(ra, name)[ia], getattr(rb, name)[ib], err_msg=name)
    sa = sort_rows({k: v[np.isin(ca["user_id"], shared)] for k, v in ca.items()})
    sb = sort_rows({k: v[np.isin(cb["user_id"], shared)] for k, v in cb.items()})
    assert_columns_equal(sa, sb)
    # and the users only in one run really are different people
    assert not np.array_equal(ra.valid[:150], rb.valid[150:])


# --- logged rows ----------------------------------------------------------------------------------------


def _requests(cols: dict[str, np.ndarray], l: int) -> np.ndarray:
    """(R, l) row indices of requests, rows in (session, t, position) order; checks the grouping."""
    order = np.lexsort((cols["position"], cols["t"], cols["session_id"]))
    assert order.size % l == 0
    rows = order.reshape(-1, l)
    for key in ("session_id", "t", "user_id", "done", "day"):
        v = cols[key][rows]
        assert (v == v[:, :1]).all(), f"{key} differs within a request"
    return rows


@pytest.mark.parametrize("which", ["explore_request", "explore_item"])
def test_logged_row_structure(which, request, small_sim):
    result, cols = request.getfixturevalue(which)
    cfg, spec, l = small_sim.cfg, small_sim.spec, small_sim.cfg.list_len
    n = len(cols["session_id"])
    assert n == result.n_rows == int(result.items.sum())
    rows = _requests(cols, l)
    np.testing.assert_array_equal(cols["position"][rows], np.broadcast_to(np.arange(l), rows.shape))

    # t runs 0..T-1 per session, done is true exactly on its last request
    first = rows[:, 0]
    sid, t, done = cols["session_id"][first], cols["t"][first], cols["done"][first]
    new = np.r_[True, sid[1:] != sid[:-1]]
    start = np.maximum.accumulate(np.where(new, np.arange(sid.size), 0))
    np.testing.assert_array_equal(t, np.arange(sid.size) - start)
    last = np.r_[new[1:], True]
    np.testing.assert_array_equal(done, last)
    assert np.unique(sid).size == result.n_sessions == int(result.sessions.sum())
    np.testing.assert_array_equal(np.sort(t[last] + 1), np.sort(np.concatenate(result.session_lengths)))
    assert result.requests.sum() == rows.shape[0]

    # list columns have the spec's sizes; features are the world's
    dims = {"user_profile": spec.user_profile.dim, "user_history": spec.user_history.dim,
            "context": spec.context.dim, "item_features": spec.item_features.dim, "mtl_scores": N_TASKS,
            "true_scores": N_TASKS, **{c: ACTION_DIM for c in ("mu_bp", "lower_b", "upper_b", "action")}}
    for name in LIST_COLUMNS:
        assert cols[name].shape == (n, dims[name]), name
    np.testing.assert_array_equal(cols["user_profile"], small_sim.users.profile[cols["user_id"]])
    np.testing.assert_array_equal(cols["item_features"], small_sim.items.features[cols["item_id"]])
    # no item is shown twice in one list
    items = np.sort(cols["item_id"][rows], 1)
    assert (items[:, 1:] != items[:, :-1]).all()

    # reward is Formula 2 on the logged behaviours; valid is watch > 10 s
    np.testing.assert_allclose(cols["reward"], item_reward(cols, cfg.reward), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(cols["valid"], (cols["watch_time"] > 10.0).astype(np.int8))
    assert 0.1 < cols["valid"].mean() < 0.6


def test_uniform_exploration_per_request_is_logged_consistently(explore_request, small_sim):
    _, cols = explore_request
    rows = _requests(cols, small_sim.cfg.list_len)
    mu, lo, hi, a = (cols[k] for k in ("mu_bp", "lower_b", "upper_b", "action"))
    np.testing.assert_allclose(mu, np.broadcast_to(baseline_policy().action, mu.shape), atol=1e-6)
    np.testing.assert_array_equal(lo, np.full_like(lo, -0.15))
    np.testing.assert_array_equal(hi, np.full_like(hi, 0.15))
    eps = a - mu
    assert (eps >= lo - ATOL).all() and (eps <= hi + ATOL).all()  # the baseline is far from the edges
    # one action per request, shared by its l items, different across requests
    per_req = a[rows]
    assert (per_req == per_req[:, :1]).all()
    assert np.unique(per_req[:, 0], axis=0).shape[0] == rows.shape[0]
    # the noise fills the box: uniform has mean 0 and reaches near both ends
    assert abs(float(eps.mean())) < 0.01
    assert eps.min() < -0.14 and eps.max() > 0.14


def test_uniform_exploration_per_item_is_logged_consistently(explore_item, small_sim):
    _, cols = explore_item
    rows = _requests(cols, small_sim.cfg.list_len)
    mu, lo, hi, a = (cols[k] for k in ("mu_bp", "lower_b", "upper_b", "action"))
    np.testing.assert_array_equal(mu, np.broadcast_to(EDGE_ACTION, mu.shape))
    eps = a - mu
    clipped_hi, clipped_lo = a >= 1.0, a <= -1.0
    inside = ~(clipped_hi | clipped_lo)
    assert ((eps >= lo - ATOL) & (eps <= hi + ATOL))[inside].all()
    # clipping happens only where the box crosses the edge, and it happened
    assert clipped_hi.any() and clipped_lo.any()
    assert (mu + hi >= 1.0)[clipped_hi].all() and (mu + lo <= -1.0)[clipped_lo].all()
    assert (np.abs(a) <= 1.0).all()
    # one draw per user-item pair: the l items of a request have different actions in every dimension
    per_req = a[rows]  # (R, l, A)
    srt = np.sort(per_req, axis=1)
    distinct = (srt[:, 1:] != srt[:, :-1]).all(1)  # (R, A)
    # dimensions whose box never crosses an edge; the noise has 16-bit resolution, so two of a request's
    # items share a value with probability ~1e-5 per dimension: almost every request has all distinct
    assert distinct[:, [2, 3, 4, 5, 7]].mean() > 0.999
    # the box is filled (the mean is not 0: ranking with per-item actions selects which items are shown)
    assert eps[:, 2].min() < -0.14 and eps[:, 2].max() > 0.14 and eps[:, 2].std() > 0.07


@pytest.mark.parametrize("n_sessions", [1, 137, 1200])
def test_max_sessions_logs_whole_user_days(small_sim, n_sessions):
    r, cols = run_logged(small_sim, baseline_policy(), seed=2, days=None, max_sessions=n_sessions)
    # at least the budget; the overshoot is bounded by the concurrent slots (max(64, n / 8)), ~1 session each
    assert n_sessions <= r.n_sessions <= n_sessions + 8 * max(64, n_sessions // 8)
    assert int(r.sessions.sum()) == r.n_sessions
    sid = np.unique(cols["session_id"])
    assert sid.size == r.n_sessions
    assert int(cols["done"].sum()) == r.n_sessions * small_sim.cfg.list_len
    # whole user-days: each user-day's sessions are k = 0..K-1, none missing (session_id encodes k)
    spd = small_sim.cfg.days.max_sessions_per_day
    user_day, k = sid // spd, sid % spd
    counts = np.bincount(np.unique(user_day, return_inverse=True)[1])
    max_k = np.zeros(counts.size, np.int64)
    np.maximum.at(max_k, np.unique(user_day, return_inverse=True)[1], k)
    np.testing.assert_array_equal(max_k + 1, counts)
    if n_sessions == 1200:  # more than 400 users open in one day (~1.9 each): the run goes on into day 2
        assert r.days.size >= 2 and np.unique(cols["day"]).size >= 2


def test_run_rejects_bad_arguments(small_sim):
    with pytest.raises(ValueError, match="days"):
        small_sim.run(baseline_policy(), seed=0, days=None)
    with pytest.raises(ValueError, match="user ids"):
        small_sim.run(baseline_policy(), seed=0, users=np.array([small_sim.cfg.n_users]))


# --- sanity: each mechanism shows -----------------------------------------------------------------------


def test_valid_only_gives_shorter_sessions_and_more_clickbait(baseline_run, valid_only_run):
    """a. Ranking by the clickbait-inflated valid task shows more clickbait and ends sessions sooner."""
    b, v = baseline_run, valid_only_run
    assert v.session_length < b.session_length - 0.5
    d, se = paired(requests_per_session(b), requests_per_session(v))
    assert d < -5 * se
    cb_b = b.clickbait_shown.sum() / b.items.sum()
    cb_v = v.clickbait_shown.sum() / v.items.sum()
    assert cb_v > 1.5 * cb_b
    assert cb_b > 0  # clickbait exists in the catalogue and the baseline sees some


def test_random_policy_has_lower_gauc_than_baseline(test_logs):
    """b. The MTL scores carry signal: a random fusion ranks worse than the baseline."""
    g_base = evaluate_gauc(baseline_policy(), test_logs)
    g_rand = evaluate_gauc(RandomPolicy(seed=0), test_logs)
    assert g_base.n_users > 2000
    assert g_rand.gauc < g_base.gauc - 0.02
    assert 0.45 < g_rand.gauc < 0.55  # random ranking is near chance


def test_oracle_fusion_beats_mtl_fusion(test_logs):
    """c. The MTL model loses information: the same fusion on the true probabilities ranks better."""
    g_base = evaluate_gauc(baseline_policy(), test_logs)
    g_oracle = evaluate_gauc(oracle_policy(), test_logs)
    assert g_oracle.gauc > g_base.gauc + 0.02


def test_worse_lists_bring_fewer_sessions(pop_sim, baseline_run, valid_only_run):
    """d. Users open fewer sessions a day after unsatisfying ones (valid-only and a share-only fusion)."""
    d, se = paired(sessions_per_day(baseline_run), sessions_per_day(valid_only_run))
    assert d < -5 * se
    share_only = FixedPolicy.from_params((0.0, 0.0, 0.0, 0.0, 2.0), BASELINE_BIAS, name="share-only")
    bad = pop_sim.run(share_only, seed=11, days=POP_DAYS)
    d, se = paired(sessions_per_day(baseline_run), sessions_per_day(bad))
    assert d < -3 * se


def test_disappointing_clickbait_brings_fewer_sessions(pop_cfg, valid_only_run):
    """d. Make clickbait much more disappointing: valid-only users (who see lots of it) come back less."""
    cfg = dataclasses.replace(pop_cfg, session=dataclasses.replace(pop_cfg.session, sat_clickbait=6.0))
    harsh = Simulator(cfg).run(valid_only_policy(), seed=11, days=POP_DAYS)
    d, se = paired(sessions_per_day(valid_only_run), sessions_per_day(harsh))
    assert d < -5 * se
    assert harsh.session_length < valid_only_run.session_length


def test_mtl_scores_are_correlated_with_truth_but_imperfect(test_logs):
    """e. Per task, the MTL scores follow the true probabilities but are not equal to them."""
    c = test_logs.columns
    m = logit(np.clip(c["mtl_scores"].astype(np.float64), 1e-6, 1 - 1e-6))
    t = logit(np.clip(c["true_scores"].astype(np.float64), 1e-6, 1 - 1e-6))
    corr = np.array([np.corrcoef(m[:, k], t[:, k])[0, 1] for k in range(N_TASKS)])
    assert (corr < 0.99).all(), corr
    # the shown items are selected on the valid score, which narrows its true range (corr ~0.2 there)
    assert (corr > 0.1).all(), corr
    assert (corr[2:] > 0.7).all(), corr  # finish, like, share
    assert (np.abs(m - t).mean(0) > 0.1).all()


def test_mtl_noise_is_larger_for_inactive_users(test_logs):
    """e. Less data, worse predictions: larger logit error for users with activity < 0.3 than > 0.7."""
    c = test_logs.columns
    err = np.abs(logit(np.clip(c["mtl_scores"].astype(np.float64), 1e-6, 1 - 1e-6))
                 - logit(np.clip(c["true_scores"].astype(np.float64), 1e-6, 1 - 1e-6)))
    activity = c["user_profile"][:, 2]
    low, high = activity < 0.3, activity > 0.7
    assert low.sum() > 5000 and high.sum() > 5000
    assert (err[low].mean(0) > 1.3 * err[high].mean(0)).all()


def test_mtl_overestimates_like_of_fresh_items(test_logs, pop_sim):
    """e. Cold start: like scores of fresh items are over-estimated on average, more than others'."""
    c = test_logs.columns
    sl = pop_sim.spec.item_features.slices()["freshness"]
    freshness = c["item_features"][:, sl][:, 0]
    # freshness = exp(-age / 3); an item is fresh when younger than items.fresh_days
    fresh = freshness > np.exp(-pop_sim.cfg.items.fresh_days / 3.0)
    assert 1000 < fresh.sum() < fresh.size - 1000
    gap = (logit(np.clip(c["mtl_scores"][:, 3].astype(np.float64), 1e-6, 1 - 1e-6))
           - logit(np.clip(c["true_scores"][:, 3].astype(np.float64), 1e-6, 1 - 1e-6)))
    se = gap[fresh].std() / np.sqrt(fresh.sum())
    assert gap[fresh].mean() > 10 * se
    assert gap[fresh].mean() > gap[~fresh].mean() + 0.5  # selection and extra noise alone give ~0.25
    assert (c["mtl_scores"][fresh, 3] - c["true_scores"][fresh, 3]).mean() > 0


def test_fatigue_shortens_sessions(pop_cfg, pop_sim):
    """f. Without fatigue (from repeated categories and on engagement) sessions get longer."""
    users = np.arange(1500)
    base = pop_sim.run(baseline_policy(), seed=13, days=1, users=users)
    cfg = dataclasses.replace(pop_cfg, session=dataclasses.replace(pop_cfg.session, fatigue_repeat=0.0),
                              behaviour=dataclasses.replace(pop_cfg.behaviour, engage_fatigue=0.0))
    fresh = Simulator(cfg).run(baseline_policy(), seed=13, days=1, users=users)
    assert fresh.session_length > base.session_length + 1.0
    d, se = paired(requests_per_session(base), requests_per_session(fresh))
    assert d > 5 * se


# --- documentation of the config ------------------------------------------------------------------------


def _undocumented_fields(cls: type) -> list[str]:
    """Fields with no docstring of their own whose name no docstring of the class mentions (a field
    directly following a documented one with the same first word, e.g. long_finish_bias after
    long_watch_bias, counts as documented by it)."""
    node = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0]
    assert isinstance(node, ast.ClassDef)
    texts = [ast.get_docstring(node) or ""]
    own: dict[str, str | None] = {}
    body = node.body
    for i, st in enumerate(body):
        if isinstance(st, ast.AnnAssign) and isinstance(st.target, ast.Name):
            nxt = body[i + 1] if i + 1 < len(body) else None
            doc = (nxt.value.value if isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)
                   and isinstance(nxt.value.value, str) else None)
            own[st.target.id] = doc
            if doc:
                texts.append(doc)
    assert set(own) == {f.name for f in dataclasses.fields(cls)}
    text = "\n".join(texts)
    missing, prev_doc_word = [], None
    for name, doc in own.items():
        word = name.split("_")[0]
        if doc:
            prev_doc_word = word
        elif name not in text and word != prev_doc_word:
            missing.append(name)
    return missing


@pytest.mark.parametrize("cls", [
    ItemConfig,
    UserConfig,
    MTLConfig,
])
def test_user_item_mtl_parameters_are_documented(cls):
    assert _undocumented_fields(cls) == []


def test_documentation_check_can_fail():
    @dataclasses.dataclass
    class Undocumented:
        """Mentions nothing."""

        documented: float = 1.0
        """Has a docstring."""
        other_thing: float = 2.0

    assert _undocumented_fields(Undocumented) == ["other_thing"]



def test_unreachable_session_budget_is_an_error():
    sim = Simulator(dataclasses.replace(SimConfig(), n_users=50, n_items=1000,
                                        days=dataclasses.replace(SimConfig().days, active_bias=-60.0)))
    with pytest.raises(RuntimeError, match="no user opened a session"):
        sim.run(baseline_policy(), seed=0, days=None, max_sessions=10)

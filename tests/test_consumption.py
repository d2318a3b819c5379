"""In-order consumption (rlmtf.envs.consumption): the hazard and prefix rules by hand, the mechanism under
common random numbers (the same list in another order gives other outcomes), unseen items without feedback
in the logs, the calibration of the default simulator, and a clear error for a bad mode."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from rlmtf.core.config_io import ConfigError
from rlmtf.data.io import read_logs
from rlmtf.envs.collect import simulate_to_parquet
from rlmtf.envs.consumption import ConsumptionConfig, item_hazard, item_mean, mask_unseen, prefix_mean, seen_prefix
from rlmtf.envs.sim.config import SimConfig, sim_config_from_dict
from rlmtf.envs.sim.simulator import Simulator
from rlmtf.policy.fixed import FixedPolicy, baseline_policy

SMALL = {"n_users": 400, "n_items": 3000}


def in_order(**kw) -> SimConfig:
    cfg = dataclasses.replace(SimConfig(), **{**SMALL, **kw})
    return dataclasses.replace(cfg, consumption=dataclasses.replace(cfg.consumption, mode="in_order"))


def test_item_hazard_keeps_the_request_leave_probability():
    # a constant logit over l items: 1 - (1 - h)^l = sigmoid(logit); by hand for p = 0.2, l = 4
    logits = np.full((1, 4), np.log(0.2 / 0.8))
    h = item_hazard(logits)
    assert np.allclose(h, 1 - 0.8 ** 0.25)
    assert np.isclose(1 - np.prod(1 - h), 0.2)
    # an offset shifts the logit: p = sigmoid(0 + log 3) = 0.75
    assert np.allclose(item_hazard(np.zeros((1, 2)), offset=np.log(3.0)), 1 - 0.25 ** 0.5)


def test_seen_prefix_and_masks_by_hand():
    hazard = np.full((3, 4), 0.5)
    u = np.array([[0.9, 0.1, 0.1, 0.9],   # leaves after item 2: items 1-2 seen
                  [0.9, 0.9, 0.9, 0.9],   # never: all seen, stays
                  [0.2, 0.9, 0.9, 0.9]])  # leaves after item 1
    seen, left = seen_prefix(hazard, u)
    assert seen.tolist() == [[True, True, False, False], [True] * 4, [True, False, False, False]]
    assert left.tolist() == [True, False, True]
    fb = {"valid": np.ones((3, 4), np.int8), "watch_time": np.full((3, 4), 30.0), "engaged": np.ones((3, 4), bool)}
    m = mask_unseen(fb, seen)
    assert m["valid"].dtype == np.int8 and m["valid"].sum() == 7 and m["watch_time"][0].tolist() == [30, 30, 0, 0]
    assert not m["engaged"][2, 1:].any() and m["seen"].tolist() == seen.astype(int).tolist()
    x = np.array([[1.0, 3.0, 100.0, 100.0]] * 3)
    assert item_mean(x, m).tolist() == [2.0, 51.0, 1.0]  # over the seen items only
    assert item_mean(x, fb).tolist() == [51.0] * 3  # "all": every item
    assert prefix_mean(x[:1]).tolist() == [[1.0, 2.0, 104 / 3, 51.0]]


class Reversed(FixedPolicy):
    """The baseline fusion's top l, shown in reverse order (or in order): the same set, another order."""

    def __init__(self, reverse: bool):
        super().__init__(baseline_policy().action)
        self.reverse = reverse

    def rank(self, obs, l):
        from rlmtf.core.fusion import ActionSpace, fused_log_score, rank_top_l

        top = rank_top_l(fused_log_score(obs.mtl_scores, self.action[None, None, :], ActionSpace()), l)
        return top[:, ::-1].copy() if self.reverse else top


def first_requests(cfg: SimConfig, reverse: bool, tmp_path, name: str) -> dict[tuple[int, int], tuple]:
    out = tmp_path / name
    simulate_to_parquet(Simulator(cfg), Reversed(reverse), out, seed=4, sessions=150)
    c = read_logs(out).columns
    first = c["t"] == 0
    rows = zip(c["session_id"], c["item_id"], c["valid"], c["watch_time"], strict=True)
    return {(int(s), int(i)): (int(v), float(w), int(c["seen"][k]) if "seen" in c else 1)
            for k, (s, i, v, w) in enumerate(rows) if first[k]}


def test_the_same_list_in_reverse_order_gives_other_outcomes_in_order_only(tmp_path):
    """Common random numbers: the first request of every session shows the same items either way. With every
    list consumed, each item's feedback is the same in both orders; consumed in order, the items a user
    reaches differ (a low-ranked item is seen less), so per-item outcomes differ."""
    all_cfg = dataclasses.replace(SimConfig(), **SMALL)
    a, b = first_requests(all_cfg, False, tmp_path, "a"), first_requests(all_cfg, True, tmp_path, "b")
    common = sorted(set(a) & set(b))
    assert len(common) > 500 and all(a[k] == b[k] for k in common)
    cfg = in_order()
    a, b = first_requests(cfg, False, tmp_path, "c"), first_requests(cfg, True, tmp_path, "d")
    common = sorted(set(a) & set(b))
    differ = [k for k in common if a[k] != b[k]]
    assert len(common) > 500 and len(differ) > 0.02 * len(common)
    # what differs is whether the item was reached; a reached item gets the same draws in both orders
    assert all(a[k][:2] == b[k][:2] for k in common if a[k][2] and b[k][2])


def test_unseen_items_are_logged_without_feedback_and_seen_is_a_prefix(tmp_path):
    out = tmp_path / "logs"
    simulate_to_parquet(Simulator(in_order()), baseline_policy(), out, seed=1, sessions=200)
    c = read_logs(out).columns
    seen = c["seen"].astype(bool)
    assert 0.8 < seen.mean() < 1.0
    for col in ("click", "valid", "finish", "like", "share", "watch_time", "reward"):
        assert not c[col][~seen].any(), col
    l = 5
    per_request = seen.reshape(-1, l)  # rows are sorted by (session, t, position)
    assert per_request[:, 0].all()  # the first item is always seen
    assert (np.diff(per_request.astype(int), axis=1) <= 0).all()  # once left, nothing after is seen
    # a request with an unseen item ends its session
    done = c["done"].reshape(-1, l)[:, 0]
    assert done[~per_request.all(1)].all()
    # every-list-consumed logs have no seen column
    simulate_to_parquet(Simulator(dataclasses.replace(SimConfig(), **SMALL)), baseline_policy(), tmp_path / "all",
                        seed=1, sessions=50)
    assert "seen" not in read_logs(tmp_path / "all").columns


def test_default_offsets_keep_the_baselines_session_statistics():
    """The calibrated offsets (SimConfig's IN_ORDER_OFFSETS, fitted on users 0..4,999, seed 12345) hold on
    other users and another seed: consumed items per session and sessions per user-day within 3%; the
    uncalibrated mechanism alone loses more than 5% of the items per session."""
    from rlmtf.envs.consumption import usage

    users = np.arange(5000, 8000)
    ref = usage(Simulator(SimConfig()), baseline_policy(), users, seed=77, days=2)
    cal = usage(Simulator(in_order(n_users=SimConfig().n_users, n_items=SimConfig().n_items)), baseline_policy(),
                users, seed=77, days=2)
    raw_cfg = dataclasses.replace(SimConfig(), consumption=ConsumptionConfig("in_order"))
    raw = usage(Simulator(raw_cfg), baseline_policy(), users, seed=77, days=2)
    assert abs(cal[0] / ref[0] - 1) < 0.03 and abs(cal[1] / ref[1] - 1) < 0.03
    assert raw[0] / ref[0] - 1 < -0.05


def test_bad_mode_is_refused_by_name():
    with pytest.raises(ConfigError, match="consumption.mode"):
        sim_config_from_dict({"consumption": {"mode": "sideways"}})
    cfg = sim_config_from_dict({"consumption": {"mode": "in_order"}})
    assert cfg.consumption.mode == "in_order" and cfg.consumption.leave_offset == -0.135

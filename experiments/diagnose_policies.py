"""What trained policies do in the simulator: the fusion they apply, how much clickbait they show,
how long sessions last and how often users come back (the mechanisms behind the online lifts).

    python experiments/diagnose_policies.py --policy baseline --policy runs/.../policy ... [--users 2000]
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from rlmtf.algos.registry import load_policy
from rlmtf.core.fusion import ActionSpace
from rlmtf.envs.sim.config import SimConfig
from rlmtf.envs.sim.simulator import Simulator


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--policy", action="append", required=True)
    ap.add_argument("--name", action="append", help="display names, in --policy order")
    ap.add_argument("--users", type=int, default=2000)
    ap.add_argument("--days", type=int, default=1)
    ap.add_argument("--seed", type=int, default=123)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    sim = Simulator(SimConfig())
    space = ActionSpace()
    rows = []
    for i, spec in enumerate(a.policy):
        pol = load_policy(spec, space)
        actions: list[np.ndarray] = []
        orig = pol.act

        def act(obs, orig=orig, actions=actions):
            x = orig(obs)
            actions.append(x.reshape(-1, x.shape[-1]))
            return x

        pol.act = act  # type: ignore[method-assign]
        r = sim.run(pol, seed=a.seed, days=a.days, users=np.arange(a.users))
        acts = np.concatenate(actions)
        power, bias = space.to_params(acts.astype(np.float64))
        n_req = r.requests.sum()
        rows.append({
            "policy": a.name[i] if a.name else spec,
            "mean power (valid, watch, finish, like, share)": power.mean(0).round(2).tolist(),
            "mean bias": bias.mean(0).round(3).tolist(),
            "clickbait per shown item": float(r.clickbait_shown.sum() / r.items.sum()),
            "requests per session": float(n_req / r.sessions.sum()),
            "sessions per user-day": float(r.sessions.mean()),
            "valid views per request": float(r.valid.sum() / n_req),
            "reward per request": float(r.reward.sum() / n_req),
            "UVC": float(r.valid.mean()),
            "UDT (min)": float(r.watch_time.mean() / 60),
            "reward per user-day": float(r.reward.mean()),
        })
    if a.json:
        print(json.dumps(rows, indent=2))
        return
    keys = list(rows[0])[1:]
    print("| policy | " + " | ".join(keys) + " |")
    print("|---|" + "---:|" * len(keys))
    for r in rows:
        cells = [str(r[k]) if isinstance(r[k], list) else f"{r[k]:.3f}" for k in keys]
        print(f"| {r['policy']} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()

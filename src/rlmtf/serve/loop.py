"""Closing the loop: the simulator's users talk to a running ranking service over HTTP.

:class:`RemoteRanker` is a policy whose ranking happens in the service: for every simulated request it
posts the user's features and the candidates to ``/v1/rank``, shows the items the service returns,
and posts the users' behaviours on them to ``/v1/feedback`` (with ``session_end`` on the last request
of a session). The service logs everything, so ``rlmtf logs export`` then yields training data made
by serving, as in the paper's Figure 3. The simulator plays the platform: users, retrieval, MTL scores
and feedback.
"""

from __future__ import annotations

import numpy as np

from rlmtf.core.fusion import MTL_TASKS
from rlmtf.core.schema import FEEDBACK_COLUMNS, FeatureGroup, FeatureSpec
from rlmtf.policy.base import Policy, RequestObs

FEEDBACK = tuple(FEEDBACK_COLUMNS)


def _named(group: FeatureGroup, row: np.ndarray) -> dict:
    return {name: (float(row[sl][0]) if sl.stop - sl.start == 1 else row[sl].astype(float).tolist())
            for name, sl in group.slices().items()}


class RemoteRanker(Policy):
    """A policy served by an HTTP ranking service (see the module docstring)."""

    level = "user"
    name = "remote"

    def __init__(self, url: str, spec: FeatureSpec, client=None, timeout: float = 10.0):
        import httpx

        self.url = url.rstrip("/")
        self.spec = spec
        self.http = client or httpx.Client(timeout=timeout)
        self._pending: dict[int, tuple[str, np.ndarray]] = {}  # row -> (request_id, shown item ids)
        self.requests = 0
        self.feedback = 0

    def check_schema(self) -> None:
        """Refuse a service that accepts other features than ``spec`` (it would answer every request 422)."""
        import httpx

        try:
            r = self.http.get(f"{self.url}/v1/schema")
        except httpx.HTTPError as e:
            raise ValueError(f"cannot reach the ranking service at {self.url}: {e}") from e
        if r.status_code != 200:
            raise ValueError(f"{self.url}/v1/schema answered {r.status_code}: {r.text[:500]}")
        served = r.json()
        spec = self.spec
        ours = {"user_features": FeatureGroup(spec.user_profile.fields + spec.user_history.fields).names(),
                "context": spec.context.names(), "item_features": spec.item_features.names()}
        differ = [k for k, names in ours.items() if served.get(k) != names]
        if differ:
            raise ValueError(f"the service at {self.url} accepts other {', '.join(differ)} than the simulator's "
                             "users have (it serves a policy trained on other features)")

    def act(self, obs: RequestObs) -> np.ndarray:
        # the service decides; the simulator only needs a well-formed placeholder
        return np.zeros((obs.batch_size, self.spec.action_dim), dtype=np.float32)

    def rank(self, obs: RequestObs, l: int) -> np.ndarray:
        spec = self.spec
        user_group = FeatureGroup(spec.user_profile.fields + spec.user_history.fields)
        shown = np.zeros((obs.batch_size, l), dtype=np.int64)
        self._pending = {}
        for b in range(obs.batch_size):
            ids = obs.item_id[b]
            _, first = np.unique(ids, return_index=True)  # the service refuses duplicate item ids
            first = np.sort(first)
            body = {
                "user_id": f"u{int(obs.user_id[b])}",
                "session_id": f"s{int(obs.session_id[b]) if obs.session_id is not None else 0}",
                "k": l,
                "user_features": _named(user_group, np.concatenate([obs.user_profile[b], obs.user_history[b]])),
                "context": _named(spec.context, obs.context[b]),
                "candidates": [{"item_id": str(int(ids[n])),
                                "item_features": _named(spec.item_features, obs.item_features[b, n]),
                                "mtl_scores": dict(zip(MTL_TASKS, obs.mtl_scores[b, n].astype(float).tolist(),
                                                       strict=True))} for n in first],
            }
            r = self.http.post(f"{self.url}/v1/rank", json=body)
            if r.status_code != 200:
                raise RuntimeError(f"/v1/rank answered {r.status_code}: {r.text[:500]}")
            out = r.json()
            index = {str(int(ids[n])): n for n in first}
            shown[b] = [index[item["item_id"]] for item in out["items"]]
            self._pending[b] = (out["request_id"], ids[shown[b]])
            self.requests += 1
        return shown

    def observe(self, obs: RequestObs, items: np.ndarray, fb: dict[str, np.ndarray], done: np.ndarray) -> None:
        for b, (request_id, shown_ids) in self._pending.items():
            for j, item in enumerate(shown_ids):
                behaviours = {k: float(fb[k][b, j]) for k in FEEDBACK}
                body = {"request_id": request_id, "item_id": str(int(item)), "event_id": f"{request_id}:{j}",
                        "behaviours": behaviours, "session_end": bool(done[b]) and j == len(shown_ids) - 1}
                r = self.http.post(f"{self.url}/v1/feedback", json=body)
                if r.status_code != 200:
                    raise RuntimeError(f"/v1/feedback answered {r.status_code}: {r.text[:500]}")
                self.feedback += 1
        self._pending = {}

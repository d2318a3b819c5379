"""Find a policy by name or path: ``baseline``, ``valid-only``, ``random``, ``oracle``, a fixed
fusion saved as JSON (``{"kind": "fixed", "action": [...]}`` or ``{"kind": "fixed", "power": {...},
"bias": {...}}``), a saved model directory holding ``policy.json`` whose ``kind`` names a loader
registered with :func:`register_loader` (trained algorithms register theirs), or a run directory of
``rlmtf train`` (its ``policy/``). Model files are JSON and safetensors only, never pickle.

:func:`policy_file` is the one place that turns a path into the policy's JSON file; every command that
names a policy goes through it (via :func:`load_policy`), so they all accept the same things and
refuse the same way.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from rlmtf.core.fusion import MTL_TASKS, ActionSpace
from rlmtf.core.schema import FeatureSpec
from rlmtf.policy.base import Policy
from rlmtf.policy.fixed import FixedPolicy, RandomPolicy, baseline_policy, oracle_policy, valid_only_policy

BUILTIN = {
    "baseline": "the hand-set fusion exploration starts from",
    "valid-only": "ranks by the valid-view score alone (the task clickbait inflates)",
    "random": "a uniform random action per request",
    "oracle": "the baseline fusion on the exact task probabilities (simulator only)",
}

Loader = Callable[[Path, dict, ActionSpace], Policy]
_LOADERS: dict[str, Loader] = {}


class PolicyLoadError(ValueError):
    """A policy name or file that cannot be loaded; the message says why."""


def check_tensors(found: dict, expected: dict, where: str | Path) -> None:
    """A model file holds exactly the tensors its ``policy.json`` implies: the same names, shapes and dtypes
    (``expected``: name -> a tensor of the right shape and dtype); :class:`PolicyLoadError` naming the first
    difference otherwise (an extra tensor is refused, not ignored)."""
    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    if missing or extra:
        parts = ([f"missing tensor(s) {missing[:5]}"] if missing else []) + \
                ([f"unexpected tensor(s) {extra[:5]}"] if extra else [])
        raise PolicyLoadError(f"{where}: the weights do not match policy.json: {'; '.join(parts)}")
    for name, want in expected.items():
        got = found[name]
        if tuple(got.shape) != tuple(want.shape) or got.dtype != want.dtype:
            raise PolicyLoadError(f"{where}: the weights do not match policy.json: tensor {name!r} is {got.dtype} "
                                  f"{list(got.shape)}, policy.json implies {want.dtype} {list(want.shape)}")


def register_loader(kind: str, loader: Loader) -> None:
    """Make ``load_policy`` accept saved policies whose policy.json has ``"kind": kind``."""
    _LOADERS[kind] = loader


def _fixed_from_json(d: dict, space: ActionSpace, where: str) -> FixedPolicy:
    name = str(d.get("name", Path(where).stem))
    try:
        if "action" in d:
            return FixedPolicy(np.asarray(d["action"], dtype=np.float32), name=name,
                               score_source=d.get("score_source", "mtl"))
        power, bias = d["power"], d["bias"]
        if isinstance(power, dict):
            missing = [t for t in MTL_TASKS if t not in power or t not in bias]
            if missing:
                raise PolicyLoadError(f"{where}: power/bias missing task(s) {missing}")
            power, bias = [power[t] for t in MTL_TASKS], [bias[t] for t in MTL_TASKS]
        return FixedPolicy.from_params(power, bias, space, name=name, score_source=d.get("score_source", "mtl"))
    except KeyError as e:
        raise PolicyLoadError(f"{where}: a fixed policy needs 'action' or 'power' and 'bias' (missing {e})") from e
    except ValueError as e:
        if isinstance(e, PolicyLoadError):
            raise
        raise PolicyLoadError(f"{where}: {e}") from e


def policy_file(spec: str) -> Path:
    """The JSON file of a saved policy: ``spec`` itself if it is a file, else ``spec/policy.json``
    (a policy directory), else ``spec/policy/policy.json`` (a run directory of ``rlmtf train``)."""
    path = Path(spec)
    if path.is_file():
        return path
    if path.is_dir():
        for candidate in (path / "policy.json", path / "policy" / "policy.json"):
            if candidate.is_file():
                return candidate
        raise PolicyLoadError(f"{path}: no policy.json in this directory nor in {path / 'policy'} (a saved "
                              "policy directory holds policy.json; a run directory holds policy/)")
    raise PolicyLoadError(f"unknown policy {spec!r}: not a built-in ({', '.join(BUILTIN)}) nor an existing "
                          "file or directory")


def _read_policy_json(path: Path) -> dict:
    try:
        d = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PolicyLoadError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(d, dict) or "kind" not in d:
        raise PolicyLoadError(f"{path}: expected a JSON object with a 'kind' field")
    return d


def saved_feature_spec(spec: str) -> FeatureSpec | None:
    """The feature spec a saved policy records (a trained policy's ``policy.json`` does), or None for a
    built-in or a policy file without one (a fixed fusion reads only the MTL scores)."""
    if spec in BUILTIN:
        return None
    path = policy_file(spec)
    d = _read_policy_json(path)
    if "feature_spec" not in d:
        return None
    try:
        return FeatureSpec.from_json(d["feature_spec"])
    except (KeyError, TypeError, ValueError) as e:
        raise PolicyLoadError(f"{path}: malformed feature_spec ({e})") from e


def load_policy(spec: str, action_space: ActionSpace = ActionSpace(), seed: int = 0) -> Policy:
    """A policy from a built-in name, a fixed-fusion JSON file, a saved model directory or a run directory
    (see :func:`policy_file`)."""
    if spec == "baseline":
        return baseline_policy(action_space)
    if spec == "valid-only":
        return valid_only_policy(action_space)
    if spec == "random":
        return RandomPolicy(seed)
    if spec == "oracle":
        return oracle_policy(action_space)
    path = policy_file(spec)
    d = _read_policy_json(path)
    kind = d["kind"]
    if kind == "fixed":
        return _fixed_from_json(d, action_space, str(path))
    if kind not in _LOADERS:
        # the project's own algorithms register their loaders on import; import them on first need
        # (they pull in torch, which a user of fixed policies should not have to wait for)
        from rlmtf.algos import ALGORITHMS, algorithm_class

        if kind in ALGORITHMS:
            algorithm_class(kind)
    if kind not in _LOADERS:
        raise PolicyLoadError(f"{path}: unknown policy kind {kind!r} (known: fixed, {', '.join(sorted(_LOADERS))})")
    return _LOADERS[kind](path.parent, d, action_space)

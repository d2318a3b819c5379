"""The one shallow base every learning algorithm shares: views of a batch, normalisation, state files.

An algorithm is a class with a typed frozen-dataclass config (``config_cls``; the actor-critic ones
build on :class:`ActorCriticConfig`), a ``kind`` (the name ``policy.json`` records and ``load_policy``
dispatches on) and a ``level``:

- ``user``: one action per request from the *user state* ``s_t`` (profile ++ history ++ context),
  applied to every candidate, trained on the request reward ``r_t`` (IntegratedRL-MTF and the
  baselines of ``docs/design.md#baselines``);
- ``item``: one action per user-item pair from the *enhanced state* (Enhanced-State RL overrides the
  view, the states and the group sizes: :mod:`rlmtf.algos.esrl`).

Every algorithm answers the same calls: ``update(batch) -> dict[str, float]``, ``act_states(states)``,
``policy()``, ``state_tensors()`` / ``load_state_tensors()`` (everything needed to resume: networks,
targets and optimizers as safetensors plus JSON metadata) and ``save_policy(dir)`` (only the modules
that act, as ``actor.safetensors`` + ``policy.json``). Loading never unpickles anything.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from rlmtf.core.bellman import discounts
from rlmtf.core.config_io import config_from_json
from rlmtf.core.fusion import ActionSpace
from rlmtf.core.schema import FeatureSpec
from rlmtf.data.transitions import RequestBatch, Transitions
from rlmtf.policy.base import Policy, RequestObs


@dataclasses.dataclass(frozen=True)
class ActorCriticConfig:
    """The hyper-parameters every actor-critic algorithm has (Enhanced-State RL, IntegratedRL-MTF, DDPG,
    CQL+SAC, BCQ, IQL); each algorithm's config adds its own after these. They start from the same
    defaults, so that a comparison of the algorithms differs only in the method."""

    gamma: float = 0.9
    """Discount from one request to the next inside a session."""
    session_gamma: float = 1.0
    """Discount from a session's last request to the user's next session of the day: used only when the
    training data are linked into day episodes (``rlmtf.core.objective``, ``train --objective day:...``)."""
    hidden: tuple[int, ...] = (256, 256)
    """Hidden layers of every network: the actor and each critic, and the algorithm's others (IQL's value
    network, BCQ's VAE encoder and decoder and its perturbation network)."""
    embed_dim: int = 32
    """Per-feature-group embedding size of the state encoders (0: none, the trunk reads the standardised
    state as d3rlpy's networks do: fewer parameters, faster steps)."""
    actor_lr: float = 3e-4
    """Adam learning rate of the actor (BCQ: of its perturbation network)."""
    critic_lr: float = 3e-4
    """Adam learning rate of the critics."""
    batch_size: int = 256
    """Requests per batch (an item-level method trains on the l user-item pairs of each)."""


@dataclasses.dataclass(frozen=True)
class BaselineConfig(ActorCriticConfig):
    """The offline baselines' config (DDPG, CQL+SAC, BCQ, IQL): :class:`ActorCriticConfig` plus the rate at
    which their target networks follow the online ones."""

    tau: float = 0.005
    """Polyak rate of the target networks, applied after every step."""

    @property
    def polyak_rate(self) -> float:
        """The targets' rate per step (tau)."""
        return self.tau


def flatten_optimizer(prefix: str, opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """An optimizer's tensors for safetensors plus its JSON-able rest (param groups, scalar state)."""
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"{prefix}.{pid}.{k}"] = v.detach().clone().contiguous()
            else:
                scalars[f"{pid}.{k}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def restore_optimizer(prefix: str, opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state: dict[int, dict] = {}
    for key, v in tensors.items():
        if key.startswith(prefix + "."):
            pid, name = key[len(prefix) + 1:].split(".", 1)
            state.setdefault(int(pid), {})[name] = v
    for key, v in meta["scalars"].items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = v
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


class Algorithm:
    """Shared plumbing; subclasses build their networks in ``__init__`` and implement ``update``."""

    kind: ClassVar[str] = ""
    level: ClassVar[Literal["user", "item"]] = "user"
    config_cls: ClassVar[type]
    #: modules that make up the acting policy, saved by ``save_policy`` (names of ``modules()``)
    acting: ClassVar[tuple[str, ...]] = ("actor",)

    cfg: Any
    step: int

    def __init__(self, spec: FeatureSpec, cfg: Any = None, device: str = "cpu", seed: int = 0):
        self.spec = spec
        self.cfg = cfg if cfg is not None else self.config_cls()
        self.device = torch.device(device)
        self.seed = seed
        self.step = 0
        torch.manual_seed(seed)  # network initialisation
        #: the algorithm's own random stream for sampling inside ``update`` (saved with the state, so a
        #: resumed run draws what an uninterrupted one would); pass ``generator=self.gen`` to torch draws
        self.gen = torch.Generator(device=self.device).manual_seed(seed)
        #: DistributedDataParallel wrappers of the trained modules under torchrun (see ``distribute``)
        self._ddp: dict[str, nn.Module] = {}
        #: ``update`` returns its metrics as 0-d tensors instead of floats: on a GPU, a float() per metric
        #: per step would wait for the device every step (the training loop converts when it logs)
        self.lazy_metrics = False
        #: the fusion parameterisation of the actions (the training loop sets the logs' own; the policy and
        #: ``policy.json`` carry it, so a saved policy ranks the same in any environment)
        self.action_space: ActionSpace | None = default_space(spec.action_dim)

    # --- the view of a batch: user level by default ----------------------------------------------------

    @classmethod
    def group_dims(cls, spec: FeatureSpec) -> list[int]:
        """Feature groups of the state the networks read (default: the user state)."""
        return [spec.user_profile.dim, spec.user_history.dim, spec.context.dim]

    @staticmethod
    def view(b: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The batch as (B, 1, .) tensors: the request is the unit; its action is the (shared) action of
        its items and its reward is r_t. Keys: s, a, mu_bp, lower_b, upper_b, r, done, gap, s2, mu_bp2,
        lower_b2, upper_b2."""
        return {"s": b["user_state"][:, None], "a": b["action"][:, :1], "mu_bp": b["mu_bp"][:, :1],
                "lower_b": b["lower_b"][:, :1], "upper_b": b["upper_b"][:, :1], "r": b["reward"][:, None],
                "done": b["done"], "gap": b["gap"], "s2": b["next_user_state"][:, None],
                "mu_bp2": b["next_mu_bp"][:, :1],
                "lower_b2": b["next_lower_b"][:, :1], "upper_b2": b["next_upper_b"][:, :1]}

    def user_tensors(self, batch: RequestBatch) -> tuple[torch.Tensor, ...]:
        """A user-level batch as flat tensors on the device: s (B, D), a (B, A), r (B,), done (B,), s2 (B, D)
        and the per-request discount into s2 (B,) (:func:`~rlmtf.core.bellman.discounts`)."""
        v = self.view(batch.to_torch(self.device))
        disc = discounts(v["gap"], self.cfg.gamma, self.cfg.session_gamma)
        return v["s"][:, 0], v["a"][:, 0], v["r"].sum(-1), v["done"], v["s2"][:, 0], disc

    @staticmethod
    def obs_states(obs: RequestObs) -> np.ndarray:
        """States the policy acts on for a request batch: (B, D) user states, or (B, N, D) for item level."""
        return obs.user_state()

    def train_states(self, t: Transitions) -> np.ndarray:
        """All training states, for the normalisation statistics: (R, D)."""
        return t.user_state

    # --- training -----------------------------------------------------------------------------------

    def modules(self) -> dict[str, nn.Module]:
        """Every network, targets included (what ``state_tensors`` saves)."""
        raise NotImplementedError

    def _optimizers(self) -> dict[str, torch.optim.Optimizer]:
        raise NotImplementedError

    def set_normalisation(self, t: Transitions) -> None:
        """Standardise inputs with training-set statistics: every module exposing ``set_normalisation``."""
        s = torch.as_tensor(self.train_states(t), dtype=torch.float32)
        self.set_normalisation_stats(s.mean(0), s.std(0))

    def set_normalisation_stats(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Standardise inputs with the given per-feature mean and standard deviation (D,)."""
        mean, std = mean.to(self.device, torch.float32), std.to(self.device, torch.float32)
        for mod in self.modules().values():
            for sub in mod.modules():
                if hasattr(sub, "set_normalisation"):
                    sub.set_normalisation(mean, std)

    def adam(self, params: Any, lr: float) -> torch.optim.Adam:
        """Adam as every algorithm uses it: on the CPU ``foreach`` (all of a network's tensors in one
        multi-tensor kernel per operation: the same arithmetic as the default loop, ~40% less time), on a
        GPU ``fused`` (the whole step in one kernel)."""
        if self.device.type == "cuda":
            return torch.optim.Adam(params, lr=lr, fused=True)
        return torch.optim.Adam(params, lr=lr, foreach=True)

    # --- data-parallel training ----------------------------------------------------------------------

    def distribute(self) -> None:
        """Wrap every trained module in :class:`torch.nn.parallel.DistributedDataParallel` (call inside an
        initialised process group, after the normalisation is set and any state is loaded).

        DDP broadcasts rank 0's weights, then averages gradients across ranks during ``backward`` of every
        forward that runs through the wrapper: ``update`` reaches a module as ``self.net(name)`` wherever a
        loss trains that module, and as the plain attribute where it only reads it (targets, frozen
        critics in an actor loss, no-grad evaluations). Any method of the module can go through the
        wrapper (``self.net("actor").sample(s, gen)``), not only ``forward``. Saved state is unchanged.
        """
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" and self.device.index is not None else None
        for name, mod in self.modules().items():
            if any(p.requires_grad for p in mod.parameters()):
                self._ddp[name] = DistributedDataParallel(_Methods(mod), device_ids=ids, broadcast_buffers=False)

    def undistribute(self) -> None:
        """Drop the DDP wrappers (after training; the modules and their weights stay), so that nothing holds the
        process group when it is destroyed."""
        self._ddp.clear()

    def net(self, name: str) -> Any:
        """The module ``name`` as a loss that trains it must call it: through its DDP wrapper when
        distributed, the module itself otherwise."""
        wrapped = self._ddp.get(name)
        return getattr(self, name) if wrapped is None else _ViaDDP(wrapped)

    def warm_start(self, t: Transitions, rng: np.random.Generator) -> float:
        """Optional pre-training before ``update`` (Enhanced-State RL regresses its actor on mu_bp)."""
        return 0.0

    def update(self, batch: RequestBatch) -> dict[str, float]:
        raise NotImplementedError

    def metrics(self, values: dict[str, torch.Tensor]) -> dict[str, Any]:
        """What ``update`` returns: floats, or detached 0-d tensors when ``lazy_metrics`` is set."""
        if self.lazy_metrics:
            return {k: v.detach() for k, v in values.items()}
        return {k: float(v.detach()) for k, v in values.items()}

    # --- acting ---------------------------------------------------------------------------------------

    def act_tensor(self, state: torch.Tensor) -> torch.Tensor:
        """Deterministic actions (S, A) in [-1, 1] for standardisable raw states (S, D)."""
        return self.modules()["actor"](state)

    @torch.no_grad()
    def act_obs(self, obs: RequestObs) -> np.ndarray:
        """Deterministic actions for a request batch (what a serving policy calls): :meth:`act_states` of
        :meth:`obs_states`, unless an algorithm has a cheaper path from the observation."""
        return self.act_states(self.obs_states(obs))

    @torch.no_grad()
    def act_states(self, states: np.ndarray) -> np.ndarray:
        """Actions (..., A) for states (..., D)."""
        x = torch.as_tensor(np.ascontiguousarray(states), dtype=torch.float32, device=self.device)
        lead = x.shape[:-1]
        return self.act_tensor(x.reshape(-1, x.shape[-1])).reshape(*lead, -1).cpu().numpy()

    def policy(self, name: str | None = None) -> AlgoPolicy:
        return AlgoPolicy(self, name or self.kind)

    # --- state ----------------------------------------------------------------------------------------

    def state_tensors(self) -> tuple[dict[str, torch.Tensor], dict]:
        """Everything needed to resume training: tensors (for safetensors) and JSON-able metadata."""
        tensors = {f"{name}.{k}": v.detach().cpu().contiguous() for name, mod in self.modules().items()
                   for k, v in mod.state_dict().items()}
        meta: dict = {"step": self.step, "kind": self.kind, "config": dataclasses.asdict(self.cfg),
                      "optimizers": {}}
        for name, opt in self._optimizers().items():
            t, m = flatten_optimizer(name, opt)
            tensors.update({k: v.cpu() for k, v in t.items()})
            meta["optimizers"][name] = m
        tensors["rng.state"] = self.gen.get_state()
        meta.update(self._extra_state())
        return tensors, meta

    def _extra_state(self) -> dict:
        """JSON-able state beyond tensors (e.g. a learned temperature kept as a float)."""
        return {}

    def _load_extra_state(self, meta: dict) -> None:
        """Restore what ``_extra_state`` saved; algorithms without extra state keep nothing (no-op)."""

    def load_state_tensors(self, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        self._load_modules(tensors, self.modules())
        for name, opt in self._optimizers().items():
            restore_optimizer(name, opt, {k: v.to(self.device) for k, v in tensors.items()}, meta["optimizers"][name])
        self.step = int(meta["step"])
        if "rng.state" in tensors:
            self.gen.set_state(tensors["rng.state"].cpu())
        self._load_extra_state(meta)

    @staticmethod
    def _load_modules(tensors: dict[str, torch.Tensor], modules: dict[str, nn.Module]) -> None:
        for name, mod in modules.items():
            sd = {k[len(name) + 1:]: v for k, v in tensors.items() if k.startswith(name + ".")}
            mod.load_state_dict(sd)

    def save_policy(self, path: str | Path, extra: dict | None = None) -> Path:
        """Write the acting modules as ``actor.safetensors`` + ``policy.json`` (loadable by ``load_policy``)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        mods = self.modules()
        save_file({f"{name}.{k}": v.detach().cpu().contiguous() for name in self.acting
                   for k, v in mods[name].state_dict().items()}, str(path / "actor.safetensors"))
        doc = {"kind": self.kind, "level": self.level, "config": dataclasses.asdict(self.cfg),
               "feature_spec": self.spec.to_json(), "step": self.step, **(extra or {})}
        if self.action_space is not None:
            doc["action_space"] = dataclasses.asdict(self.action_space)
        (path / "policy.json").write_text(json.dumps(doc, indent=2))
        return path


class _Methods(nn.Module):
    """Lets DistributedDataParallel run any method of a module: ``self(name, *args)`` is ``module.name(*args)``."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.inner = module

    def forward(self, method: str, *args: Any, **kwargs: Any) -> Any:
        if method == "forward":  # through __call__: a compiled module runs compiled
            return self.inner(*args, **kwargs)
        return getattr(self.inner, method)(*args, **kwargs)


class _ViaDDP:
    """Calls and method calls of a module, routed through its DDP wrapper (see ``Algorithm.net``)."""

    def __init__(self, ddp: nn.Module):
        self._ddp = ddp

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._ddp("forward", *args, **kwargs)

    def __getattr__(self, method: str) -> Any:
        return lambda *args, **kwargs: self._ddp(method, *args, **kwargs)


class AlgoPolicy(Policy):
    """A trained algorithm serving as a fusion policy (item-level or user-level)."""

    def __init__(self, algo: Algorithm, name: str):
        self.algo, self.level, self.kind, self.name = algo, algo.level, algo.kind, name  # type: ignore[misc]
        self.action_space = algo.action_space

    @torch.no_grad()
    def act(self, obs: RequestObs) -> np.ndarray:
        return self.algo.act_obs(obs)


def load_saved_policy(path: Path, doc: dict, space: ActionSpace, algo_cls: type[Algorithm]) -> AlgoPolicy:
    """Rebuild a saved policy from ``policy.json`` + ``actor.safetensors`` (never pickle)."""
    from rlmtf.algos.registry import PolicyLoadError, check_tensors

    try:
        spec = FeatureSpec.from_json(doc["feature_spec"])
        cfg = config_from_json(algo_cls.config_cls, dict(doc["config"]))
    except (KeyError, TypeError, ValueError) as e:
        raise PolicyLoadError(f"{path / 'policy.json'}: malformed {algo_cls.kind} policy ({e})") from e
    weights = path / "actor.safetensors"
    if not weights.is_file():
        raise PolicyLoadError(f"{weights}: missing model file")
    try:
        sd = load_file(str(weights))
    except Exception as e:  # safetensors raises its own error types for truncated/corrupt files
        raise PolicyLoadError(f"{weights}: cannot read model weights ({e})") from e
    try:
        algo = algo_cls(spec, cfg)
    except (TypeError, ValueError, RuntimeError) as e:
        raise PolicyLoadError(f"{path / 'policy.json'}: cannot build a {algo_cls.kind} policy from it ({e})") from e
    mods = algo.modules()
    check_tensors(sd, {f"{name}.{k}": v for name in algo_cls.acting for k, v in mods[name].state_dict().items()},
                  weights)
    try:
        Algorithm._load_modules(sd, {name: mods[name] for name in algo_cls.acting})
    except RuntimeError as e:
        raise PolicyLoadError(f"{weights}: weights do not match policy.json ({e})") from e
    for m in mods.values():
        m.eval()
    algo.step = int(doc.get("step", 0))
    if "action_space" in doc:
        try:
            algo.action_space = ActionSpace.from_dict(dict(doc["action_space"]))
        except (TypeError, ValueError) as e:
            raise PolicyLoadError(f"{path / 'policy.json'}: malformed action_space ({e})") from e
        if algo.action_space.dim != spec.action_dim:
            raise PolicyLoadError(f"{path / 'policy.json'}: action_space has {algo.action_space.dim} dimensions, "
                                  f"the feature spec {spec.action_dim}")
    return AlgoPolicy(algo, str(doc.get("name", algo_cls.kind)))


def default_space(dim: int) -> ActionSpace | None:
    """The default action space of ``dim`` dimensions, None if no parameterisation has that many."""
    try:
        return ActionSpace.for_dim(dim)
    except ValueError:
        return None


def register(algo_cls: type[Algorithm]) -> None:
    """Make ``load_policy`` load this algorithm's saved policies."""
    from rlmtf.algos.registry import register_loader

    register_loader(algo_cls.kind, lambda p, d, s: load_saved_policy(p, d, s, algo_cls))

"""ES: the online evolution-strategy baseline of the multi-task-fusion papers (``docs/design.md#baselines``).

Papers: the ES baseline of the Tencent MTF line this project reproduces (Enhanced-State RL: P. Liu,
C. Xu, M. Zhao, J. Zhu, B. Wang, Y. Ren, "An Enhanced-State Reinforcement Learning Algorithm for
Multi-Task Fusion in Large-Scale Recommender Systems", Tencent, 2024, and its predecessors
IntegratedRL-MTF and BatchRL-MTF, Q. Zhang et al., KDD 2022): before offline RL, fusion weights were
tuned online by an evolution strategy that perturbs the parameters of a small personalised fusion
policy, measures each perturbation's instant reward on live traffic and moves towards the better
ones. The papers describe it only in passing; the optimiser here is CMA-ES (N. Hansen, A. Ostermeier,
"Completely Derandomized Self-Adaptation in Evolution Strategies", Evolutionary Computation, 2001;
the ``cmaes`` package).

The policy: action = tanh(W x + b), where x is the user state standardised with training-set
statistics (as :class:`rlmtf.core.nets.StateEncoder` does). CMA-ES searches theta = (w, b) with
W = w / sqrt(D), D the state's dimension, so that one step size suits both parts: an isotropic step
of size sigma in w moves the pre-activation by about sigma, as the same step in b does. It starts at
W = 0 and b = atanh(the hand-set baseline action) unless ``init_action`` says otherwise.

How it differs here: the "live system" is the simulator (:meth:`attach`); one ``update`` is one
generation: ``popsize`` candidates, each played for ``sessions_per_candidate`` sessions of fresh
users of one simulated day, with common random numbers inside a generation (the same simulator seed
and user order for every candidate) and fresh ones per generation, derived from the algorithm's
seed and its step count so that a run is deterministic and resumes exactly. The fitness is the mean
instant reward per request; the policy served is the distribution's mean. The papers give neither
their ES variant nor its settings; the defaults keep a generation at 1.5-2 s on one CPU core.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Literal

import numpy as np
import torch
from cmaes import CMA
from torch import nn

from rlmtf.algos.base import Algorithm, register
from rlmtf.core.nets import STD_FLOOR, standardise
from rlmtf.core.schema import FeatureSpec
from rlmtf.data.transitions import RequestBatch
from rlmtf.policy.base import Policy, RequestObs
from rlmtf.policy.fixed import baseline_policy

if TYPE_CHECKING:
    from rlmtf.envs.engine import Environment

try:  # optional (installed with scikit-learn); without it the thread pools are left alone
    from threadpoolctl import threadpool_limits
except ImportError:  # pragma: no cover
    threadpool_limits = None


def _one_thread() -> contextlib.AbstractContextManager:
    """BLAS and OpenMP (torch's intra-op pool) on one thread while a generation runs. The work is small
    (a 470 x 470 ``eigh``, a (64, 46) x (46, 10) product per simulated request) and on a busy machine
    multi-threading it is ruinous: measured on 2 shared cores, the ``eigh`` took 3.4 s instead of 40 ms
    and the policy's forward pass 5-20 ms instead of 0.05 ms. One thread also makes the CMA-ES linear
    algebra independent of the machine's core count."""
    return threadpool_limits(1) if threadpool_limits is not None else contextlib.nullcontext()


#: Actions of ``init_action`` are clipped to this magnitude before atanh (keeps b finite).
_INIT_CLIP = 0.999
#: CMA-ES state (attributes of ``cmaes.CMA``) that changes during a run; the rest follows from the
#: dimension, the population size and sigma0. ``_B`` and ``_D`` are a cache rebuilt from ``_C``.
_CMA_ARRAYS = ("_mean", "_C", "_p_sigma", "_pc", "_funhist_values")


@dataclass(frozen=True)
class ESConfig:
    """Hyper-parameters (the papers publish none): a generation takes 1.5-2 s on one CPU core."""

    popsize: int = 12
    """Candidates per generation (CMA-ES lambda)."""
    sessions_per_candidate: int = 64
    """Sessions each candidate plays (whole user-days, so slightly more; about 700 requests)."""
    sigma0: float = 0.2
    """Initial CMA-ES step size, in units of the policy's pre-tanh activation."""
    personalised: bool = True
    """Search W and b (a personalised policy); False: only b (one action for every user)."""
    init_action: tuple[float, ...] | None = None
    """Starting action in [-1, 1]^A (b = atanh of it, W = 0); None: the hand-set baseline action."""
    eval_mean: bool = True
    """Also play the new mean on the generation's seed and report it as ``es/fitness_of_mean``."""

    def __post_init__(self) -> None:
        if self.popsize < 2:
            raise ValueError(f"popsize must be >= 2, got {self.popsize}")
        if self.sessions_per_candidate < 1:
            raise ValueError(f"sessions_per_candidate must be >= 1, got {self.sessions_per_candidate}")
        if not self.sigma0 > 0:
            raise ValueError(f"sigma0 must be > 0, got {self.sigma0}")
        if self.init_action is not None:
            object.__setattr__(self, "init_action", tuple(float(x) for x in self.init_action))


class LinearPolicy(nn.Module):
    """tanh(W standardise(x) + b): (..., D) -> (..., A). Standardised like :class:`rlmtf.core.nets.StateEncoder`."""

    def __init__(self, state_dim: int, action_dim: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(state_dim))
        self.register_buffer("std", torch.ones(state_dim))
        self.weight = nn.Parameter(torch.zeros(action_dim, state_dim), requires_grad=False)
        self.bias = nn.Parameter(torch.zeros(action_dim), requires_grad=False)

    def set_normalisation(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.mean.copy_(mean)
        self.std.copy_(torch.clamp(std, min=STD_FLOOR))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(standardise(x, self.mean, self.std) @ self.weight.T + self.bias)


class _NetPolicy(Policy):
    """A candidate's policy for the simulator (the same computation as :class:`AlgoPolicy` of the mean)."""

    level = "user"

    def __init__(self, net: LinearPolicy, name: str = "es-candidate"):
        self.net, self.name = net, name

    @torch.no_grad()
    def act(self, obs: RequestObs) -> np.ndarray:
        x = torch.as_tensor(np.ascontiguousarray(obs.user_state()), dtype=torch.float32, device=self.net.mean.device)
        return self.net(x).cpu().numpy()


class EvolutionStrategy(Algorithm):
    """CMA-ES over a linear-tanh personalised fusion policy, evaluated online in the simulator."""

    kind: ClassVar[str] = "es"
    level: ClassVar[Literal["user", "item"]] = "user"
    config_cls: ClassVar[type] = ESConfig
    acting: ClassVar[tuple[str, ...]] = ("actor",)
    online: ClassVar[bool] = True
    cfg: ESConfig

    def __init__(self, spec: FeatureSpec, cfg: ESConfig | None = None, device: str = "cpu", seed: int = 0):
        super().__init__(spec, cfg, device, seed)
        cfg = self.cfg
        self.action_dim = a = spec.action_dim
        self.state_dim = d = sum(self.group_dims(spec))
        start = baseline_policy(self.action_space).action if self.action_space is not None else None
        init = np.asarray(start if cfg.init_action is None else cfg.init_action, np.float64)
        if init.shape != (a,) or not np.isfinite(init).all() or (np.abs(init) > 1).any():
            raise ValueError(f"init_action must be {a} numbers in [-1, 1], got {cfg.init_action}")
        b0 = np.arctanh(np.clip(init, -_INIT_CLIP, _INIT_CLIP))
        theta0 = np.concatenate([np.zeros(a * d), b0]) if cfg.personalised else b0
        self.actor = LinearPolicy(d, a).to(self.device)
        self.sim: Environment | None = None
        self._cma = CMA(mean=theta0, sigma=cfg.sigma0, population_size=cfg.popsize,
                        seed=self._seeds(-1)[2])
        self._cma._funhist_values[:] = np.nan  # np.empty in cmaes: make the state deterministic
        self._set_params(theta0)
        #: the last generation, for inspection: candidates (popsize, n), fitnesses, seed, users
        self.last_candidates: np.ndarray | None = None
        self.last_fitness: np.ndarray | None = None
        self.last_seed: int | None = None
        self.last_users: np.ndarray | None = None

    # --- parameters ---------------------------------------------------------------------------------

    @property
    def n_params(self) -> int:
        """Dimension of the CMA-ES search space."""
        return self._cma.dim

    def params_of(self, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """theta -> (W (A, D), b (A,)): theta = (w.ravel(), b) with W = w / sqrt(D), or b alone."""
        a, d = self.action_dim, self.state_dim
        theta = np.asarray(theta, np.float64)
        if theta.shape != (self.n_params,):
            raise ValueError(f"theta has shape {theta.shape}, expected ({self.n_params},)")
        if not self.cfg.personalised:
            return np.zeros((a, d)), theta
        return theta[: a * d].reshape(a, d) / math.sqrt(d), theta[a * d:]

    def _load_params(self, net: LinearPolicy, theta: np.ndarray) -> None:
        w, b = self.params_of(theta)
        with torch.no_grad():
            net.weight.copy_(torch.as_tensor(w, dtype=torch.float32))
            net.bias.copy_(torch.as_tensor(b, dtype=torch.float32))

    def _set_params(self, theta: np.ndarray) -> None:
        self._load_params(self.actor, theta)

    def candidate_policy(self, theta: np.ndarray) -> Policy:
        """The policy of parameters theta, with the current input standardisation."""
        net = LinearPolicy(self.state_dim, self.action_dim).to(self.device)
        net.load_state_dict(self.actor.state_dict())
        self._load_params(net, theta)
        return _NetPolicy(net)

    # --- the live system ----------------------------------------------------------------------------

    def attach(self, sim: Environment) -> None:
        """Use ``sim`` as the system candidates are evaluated in."""
        got = (sum(self.group_dims(sim.spec)), sim.spec.action_dim)
        if got != (self.state_dim, self.action_dim):
            raise ValueError(f"the simulator's (state, action) dimensions {got} do not match the algorithm's "
                             f"{(self.state_dim, self.action_dim)}")
        self.sim = sim

    def _seeds(self, step: int) -> tuple[int, int, int]:
        """(simulator seed, user-order seed, CMA-ES sampling seed) of generation ``step``."""
        ss = np.random.SeedSequence([self.seed & 0xFFFF_FFFF_FFFF_FFFF, step + 1])
        s = ss.generate_state(3)
        return int(s[0]), int(s[1]), int(s[2])

    def generation_inputs(self, step: int) -> tuple[int, np.ndarray]:
        """The common random numbers of generation ``step``: the simulator seed and the user order
        (a permutation of all users; the first active ones play until the session budget is spent)."""
        if self.sim is None:
            raise RuntimeError("EvolutionStrategy is an online method: call attach(sim) before update()")
        sim_seed, user_seed, _ = self._seeds(step)
        return sim_seed, np.random.default_rng(user_seed).permutation(self.sim.cfg.n_users)

    def fitness(self, theta: np.ndarray, seed: int, users: np.ndarray) -> tuple[float, float]:
        """(mean instant reward per request, requests) of parameters theta played in the simulator."""
        if self.sim is None:
            raise RuntimeError("EvolutionStrategy is an online method: call attach(sim) before update()")
        res = self.sim.run(self.candidate_policy(theta), seed=seed, days=1,
                           max_sessions=self.cfg.sessions_per_candidate, users=users)
        req = float(res.requests.sum())
        return float(res.reward.sum()) / max(req, 1.0), req

    # --- training -----------------------------------------------------------------------------------

    def update(self, batch: RequestBatch | None = None) -> dict[str, float]:
        """One CMA-ES generation (``batch`` is ignored: the data come from the simulator)."""
        seed, users = self.generation_inputs(self.step)
        with _one_thread():
            self._cma.reseed_rng(self._seeds(self.step)[2])
            thetas = np.stack([self._cma.ask() for _ in range(self._cma.population_size)])  # (P, n)
            evals = [self.fitness(th, seed, users) for th in thetas]
            fit = np.array([f for f, _ in evals])  # (P,)
            self._cma.tell([(th, -f) for th, f in zip(thetas, fit, strict=True)])  # CMA-ES minimises
            mean = self._cma.mean.copy()
            self._set_params(mean)
            self.step += 1
            self.last_candidates, self.last_fitness, self.last_seed, self.last_users = thetas, fit, seed, users
            m = {"es/fitness_mean": float(fit.mean()), "es/fitness_best": float(fit.max()),
                 "es/fitness_worst": float(fit.min()), "es/sigma": float(self._cma._sigma),
                 "es/requests_per_candidate": float(np.mean([r for _, r in evals])),
                 "es/mean_norm": float(np.linalg.norm(mean))}
            if self.cfg.eval_mean:
                m["es/fitness_of_mean"] = self.fitness(mean, seed, users)[0]
        return m

    # --- state ----------------------------------------------------------------------------------------

    def modules(self) -> dict[str, nn.Module]:
        return {"actor": self.actor}

    def _optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {}

    def _extra_state(self) -> dict:
        return {"es": {"seed": self.seed, "generation": int(self._cma.generation), "dim": self.n_params,
                       "popsize": self._cma.population_size}}

    def _load_extra_state(self, meta: dict) -> None:
        es = meta["es"]
        if es["dim"] != self.n_params or es["popsize"] != self._cma.population_size:
            raise ValueError(f"ES state has dim {es['dim']} and popsize {es['popsize']}; this algorithm "
                             f"has {self.n_params} and {self._cma.population_size}")
        self.seed = int(es["seed"])
        self._cma._g = int(es["generation"])

    def state_tensors(self) -> tuple[dict[str, torch.Tensor], dict]:
        tensors, meta = super().state_tensors()
        for name in _CMA_ARRAYS:
            tensors[f"cma.{name}"] = torch.from_numpy(np.array(getattr(self._cma, name), dtype=np.float64))
        tensors["cma._sigma"] = torch.tensor(float(self._cma._sigma), dtype=torch.float64)
        return tensors, meta

    def load_state_tensors(self, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        super().load_state_tensors(tensors, meta)  # the actor, the step, the seed; dim/popsize checked
        for name in _CMA_ARRAYS:
            arr = tensors[f"cma.{name}"].detach().cpu().numpy().astype(np.float64)
            want = getattr(self._cma, name).shape
            if arr.shape != want:
                raise ValueError(f"ES state: cma.{name} has shape {arr.shape}, expected {want}")
            setattr(self._cma, name, arr.copy())
        self._cma._sigma = float(tensors["cma._sigma"])
        self._cma._B, self._cma._D = None, None  # eigen-decomposition cache: rebuilt from _C


register(EvolutionStrategy)

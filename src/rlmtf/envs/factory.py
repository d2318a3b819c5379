"""The environment behind the CLI's ``--env``: the embedded simulator or the KuaiRand-Pure world."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

from rlmtf.envs.engine import Environment

ENVIRONMENTS = ("sim", "kuairand")


def make_env(name: str, sim_config: Path | None = None, kuairand_dir: Path | None = None,
             models_dir: Path | None = None, log: Callable[[str], None] = print,
             action_space: str | None = None) -> Environment:
    """The environment ``name`` for the CLI's ``--env``: "sim" (the embedded simulator, configured by
    ``sim_config``) or "kuairand" (:class:`KuaiRandEnv`, ``sim_config`` then overrides
    :class:`KuaiRandEnvConfig`).

    For "kuairand" the fitted models are read from ``models_dir`` (default :func:`default_models_dir`); if
    it holds none they are fitted there first from ``kuairand_dir`` (default ``$RLMTF_KUAIRAND_DIR`` or
    ``shared/data/kuairand_pure``), about 90 s on one thread, with progress messages through ``log``.

    ``action_space`` ("paper" or "relative", docs/design.md#the-action-space) overrides the parameterisation of
    the config's ``action_space``: the space the environment's logs record actions in."""
    if name == "sim":
        from rlmtf.envs.sim.config import load_sim_config
        from rlmtf.envs.sim.simulator import Simulator

        return Simulator(with_action_space(load_sim_config(sim_config), action_space))
    if name != "kuairand":
        raise ValueError(f"unknown environment {name!r}; available: {', '.join(ENVIRONMENTS)}")
    from rlmtf.envs.kuairand.config import load_env_config
    from rlmtf.envs.kuairand.env import KuaiRandEnv
    from rlmtf.envs.kuairand.fit import fit_all
    from rlmtf.envs.kuairand.paths import default_models_dir, resolve_data_dir

    cfg = with_action_space(load_env_config(sim_config), action_space)
    if models_dir is None:
        models_dir = default_models_dir(resolve_data_dir(kuairand_dir))
    models_dir = Path(models_dir)
    if not (models_dir / "manifest.json").is_file():
        data_dir = resolve_data_dir(kuairand_dir)
        log(f"KuaiRand environment: fitting the response and MTL models (first use, about 90 s on one thread) "
            f"from {data_dir} into {models_dir}")
        fit_all(data_dir, models_dir, log=lambda s: log(f"  {s}"))
    return KuaiRandEnv.load(models_dir, cfg, data_dir=kuairand_dir, log=log)


def with_action_space(cfg, parameterisation: str | None):
    """``cfg`` (a frozen environment config) with its action space's parameterisation replaced (None: as is)."""
    if parameterisation is None or parameterisation == cfg.action_space.parameterisation:
        return cfg
    return dataclasses.replace(cfg, action_space=dataclasses.replace(cfg.action_space,
                                                                     parameterisation=parameterisation))

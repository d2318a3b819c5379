"""The environment behind the CLI's ``--env``: the embedded simulator or the KuaiRand-Pure world."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from rlmtf.envs.engine import Environment

ENVIRONMENTS = ("sim", "kuairand")


def make_env(name: str, sim_config: Path | None = None, kuairand_dir: Path | None = None,
             models_dir: Path | None = None, log: Callable[[str], None] = print) -> Environment:
    """The environment ``name`` for the CLI's ``--env``: "sim" (the embedded simulator, configured by
    ``sim_config``) or "kuairand" (:class:`KuaiRandEnv`, ``sim_config`` then overrides
    :class:`KuaiRandEnvConfig`).

    For "kuairand" the fitted models are read from ``models_dir`` (default :func:`default_models_dir`); if
    it holds none they are fitted there first from ``kuairand_dir`` (default ``$RLMTF_KUAIRAND_DIR`` or
    ``shared/data/kuairand_pure``), about 90 s on one thread, with progress messages through ``log``."""
    if name == "sim":
        from rlmtf.envs.sim.config import load_sim_config
        from rlmtf.envs.sim.simulator import Simulator

        return Simulator(load_sim_config(sim_config))
    if name != "kuairand":
        raise ValueError(f"unknown environment {name!r}; available: {', '.join(ENVIRONMENTS)}")
    from rlmtf.envs.kuairand.config import load_env_config
    from rlmtf.envs.kuairand.env import KuaiRandEnv
    from rlmtf.envs.kuairand.fit import fit_all
    from rlmtf.envs.kuairand.paths import default_models_dir, resolve_data_dir

    cfg = load_env_config(sim_config)
    if models_dir is None:
        models_dir = default_models_dir(resolve_data_dir(kuairand_dir))
    models_dir = Path(models_dir)
    if not (models_dir / "manifest.json").is_file():
        data_dir = resolve_data_dir(kuairand_dir)
        log(f"KuaiRand environment: fitting the response and MTL models (first use, about 90 s on one thread) "
            f"from {data_dir} into {models_dir}")
        fit_all(data_dir, models_dir, log=lambda s: log(f"  {s}"))
    return KuaiRandEnv.load(models_dir, cfg, data_dir=kuairand_dir, log=log)

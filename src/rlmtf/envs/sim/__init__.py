"""The user-session simulator: a synthetic world of the request engine (``docs/design.md#the-simulator``)."""

from rlmtf.envs.sim.config import SimConfig, load_sim_config
from rlmtf.envs.sim.simulator import Simulator

__all__ = ["SimConfig", "Simulator", "load_sim_config"]

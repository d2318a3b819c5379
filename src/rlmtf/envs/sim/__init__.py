"""The user-session simulator (SPEC section 10)."""

from rlmtf.envs.sim.config import SimConfig, load_sim_config
from rlmtf.envs.sim.simulator import RunResult, Simulator

__all__ = ["RunResult", "SimConfig", "Simulator", "load_sim_config"]

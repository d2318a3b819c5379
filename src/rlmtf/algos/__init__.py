"""Training algorithms that turn logged data (or, for ES, the simulator) into fusion policies.

``ALGORITHMS`` names every algorithm and where it lives; :func:`algorithm_class` imports one on
demand, so that naming an algorithm does not pull in all of them.
"""

from __future__ import annotations

import importlib

#: name -> "module:Class"; the name is the ``kind`` a saved policy records.
ALGORITHMS: dict[str, str] = {
    "esrl": "rlmtf.algos.esrl:EnhancedStateRL",
    "integrated": "rlmtf.algos.integrated:IntegratedRL",
    "es": "rlmtf.algos.es:EvolutionStrategy",
    "ddpg": "rlmtf.algos.ddpg:DDPG",
    "cql_sac": "rlmtf.algos.cql_sac:CQLSAC",
    "bcq": "rlmtf.algos.bcq:BCQ",
    "iql": "rlmtf.algos.iql:IQL",
}


def algorithm_class(name: str) -> type:
    """The class of algorithm ``name``; ``ValueError`` naming the choices if unknown."""
    if name not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {name!r}; choose from {', '.join(ALGORITHMS)}")
    mod, cls = ALGORITHMS[name].split(":")
    return getattr(importlib.import_module(mod), cls)

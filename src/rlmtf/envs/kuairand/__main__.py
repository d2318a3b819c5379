"""``python -m rlmtf.envs.kuairand --out DIR``: fit and save the KuaiRand-Pure response and MTL models."""

from rlmtf.envs.kuairand.fit import main

main()

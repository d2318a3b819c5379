"""``python -m rlmtf.kuairand --out DIR``: fit and save the KuaiRand-Pure response and MTL models."""

from rlmtf.kuairand.fit import main

main()

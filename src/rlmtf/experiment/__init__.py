"""Experiments that reproduce the paper's tables on the simulator (``rlmtf experiment paper``)."""

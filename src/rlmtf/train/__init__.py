"""Training runs: the loop that turns logged data (or, for ES, an environment) into a saved policy, with
checkpoints, resumption, streaming and data-parallel training."""

"""The shared kernel every layer builds on: the fusion formula and action space, the reward, the
logged-data schema and feature spec, counter-based random numbers, the config-file loader, the neural
network building blocks and run provenance. It imports nothing else of rlmtf."""

"""Environments that play sessions of users under a fusion policy: the synthetic simulator (``sim``) and
the world grounded in the real KuaiRand-Pure log (``kuairand``), both on one request engine
(``engine``), with collection to Parquet (``collect``), multi-process runs (``parallel``) and the
factory behind the CLI's ``--env`` (``factory``)."""

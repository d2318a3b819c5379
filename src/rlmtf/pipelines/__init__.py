"""Multi-stage workflows built from environments, algorithms, training and evaluation: progressive
training (``ptm``), the fixed-fusion search (``fixed_search``), the paper's experiment (``paper``) and its
report (``report``)."""

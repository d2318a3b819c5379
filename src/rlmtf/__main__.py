"""``python -m rlmtf`` (and ``torchrun -m rlmtf train ...``): the command line."""

from rlmtf.cli import app

app(prog_name="rlmtf")

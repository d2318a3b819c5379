"""``python -m rlmtf.cli``: the command line (as ``rlmtf``)."""

from rlmtf.cli import app

app(prog_name="rlmtf")

"""The ``rlmtf`` command line: simulate, train, evaluate, serve, reproduce the paper.

One module per group of commands, in the order of the data flow; this file only assembles them
(the order here is the order of ``rlmtf --help``):

- :mod:`~rlmtf.cli.simulate`: ``simulate``, ``sim config``, ``sim calibrate``
- :mod:`~rlmtf.cli.data`: ``data validate``, ``data shard``, ``data kuairand``
- :mod:`~rlmtf.cli.train`: ``train``, ``ptm``
- :mod:`~rlmtf.cli.evaluate`: ``evaluate gauc``, ``evaluate real-gauc``, ``evaluate online``,
  ``analyze exploration``
- :mod:`~rlmtf.cli.serve`: ``serve``, ``loop``, ``logs export``, ``logs check``
- :mod:`~rlmtf.cli.experiment`: ``experiment paper``, ``experiment render``, ``demo``
- :mod:`~rlmtf.cli.common`: the shared options, error handling, the overwrite rule, policy labels and
  progress display
- :mod:`~rlmtf.cli.runs`: what ``train`` checks and reports around the training loop (argument checks
  before any import, a resumed run's configuration, the exploration warning, the progress text)

Commands import the library lazily, inside their bodies, so that ``rlmtf --help`` and the fixed-policy
commands do not wait for torch, and check their arguments before those imports. Flags take no value
(``--json``, not ``--json true``); ``-h`` is ``--help``; ``rlmtf --version`` prints the version.
"""

from __future__ import annotations

from typing import Annotated

import typer

from rlmtf.cli import data, evaluate, experiment, serve, simulate, train
from rlmtf.cli.common import FlagGroup

__all__ = ["app"]

app = typer.Typer(help="Reinforcement-learning multi-task fusion for recommender systems.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False, cls=FlagGroup,
                  context_settings={"help_option_names": ["-h", "--help"]})


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"rlmtf {version('rlmtf')}")
        raise typer.Exit()


@app.callback()
def main(version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                               help="Print the version and exit.")] = False) -> None:
    """Reinforcement-learning multi-task fusion for recommender systems."""

app.command()(simulate.simulate)
app.command()(train.train)
app.command()(train.ptm)
app.command()(serve.serve)
app.command()(serve.loop)
app.command()(experiment.demo)
app.add_typer(simulate.sim_app, name="sim")
app.add_typer(data.data_app, name="data")
app.add_typer(evaluate.eval_app, name="evaluate")
app.add_typer(evaluate.analyze_app, name="analyze")
app.add_typer(serve.logs_app, name="logs")
app.add_typer(experiment.experiment_app, name="experiment")

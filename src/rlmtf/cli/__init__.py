"""The ``rlmtf`` command line: simulate, train, evaluate, serve, reproduce the paper.

One module per group of commands, in the order of the data flow; this file only assembles them
(the order here is the order of ``rlmtf --help``):

- :mod:`~rlmtf.cli.simulate`: ``simulate``, ``sim config``, ``sim calibrate``
- :mod:`~rlmtf.cli.data`: ``data validate``, ``data shard``, ``data kuairand``
- :mod:`~rlmtf.cli.train`: ``train``, ``ptm``
- :mod:`~rlmtf.cli.evaluate`: ``evaluate gauc``, ``evaluate real-gauc``, ``evaluate online``,
  ``analyze exploration``
- :mod:`~rlmtf.cli.serve`: ``serve``, ``loop``, ``logs export``
- :mod:`~rlmtf.cli.experiment`: ``experiment paper``, ``experiment render``, ``demo``
- :mod:`~rlmtf.cli.common`: the shared options, error handling and progress display

Commands import the library lazily, inside their bodies, so that ``rlmtf --help`` and the fixed-policy
commands do not wait for torch.
"""

from __future__ import annotations

import typer

from rlmtf.cli import data, evaluate, experiment, serve, simulate, train

__all__ = ["app"]

app = typer.Typer(help="Reinforcement-learning multi-task fusion for recommender systems.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False)

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

"""The ``allscan`` command line: a thin layer over the library (parse, call, print).

``app`` holds the Typer application and its one-line error rule; ``options`` every option;
``loading`` the checks and loads that come before work; one module per command group (``score``:
predict, watch, explain; ``train``: models, train, ship, tune, evaluate, fit-domain; ``adapt``);
``display`` all that is printed.
"""

from allscan.cli import score, train, adapt  # noqa: I001 (the order of the commands in --help)
from allscan.cli.app import app

__all__ = ["adapt", "app", "score", "train"]

"""The ``allscan`` command line: a thin layer over the library (parse, call, print)."""

from allscan.cli.app import app

__all__ = ["app"]

"""The Typer application: its consoles, exit codes and the rule that every failure is one line.

Whatever goes wrong inside a command reaches the user as one line on stderr and an exit
code from the README's table, never a traceback (``ALLSCAN_DEBUG=1`` shows one).
"""

import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.text import Text
from typer.core import TyperGroup

from allscan import __version__

EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE, EXIT_IO, EXIT_INTERNAL, EXIT_INTERRUPTED = 0, 1, 2, 3, 4, 130
_RUN_COMMANDS = ("predict", "watch")


@contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM (a service manager's stop, ``docker stop``, a scheduler's limit) ends the command as Ctrl-C does:
    what was scored is written and the exit code is 130, instead of the process dying with nothing written."""

    def interrupt(*_):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class _OneLineErrors(TyperGroup):
    """Runs a command; any failure it lets out becomes one line on stderr and its exit code."""

    def parse_args(self, ctx, args):
        with _usage_in_one_line():
            return super().parse_args(ctx, args)

    def invoke(self, ctx):
        try:
            with _usage_in_one_line():  # a command's own arguments are parsed here
                return super().invoke(ctx)
        except (typer.Exit, typer.Abort, typer.TyperException):  # exits, Ctrl-C at a prompt
            raise
        except (Exception, KeyboardInterrupt) as exc:
            if os.environ.get("ALLSCAN_DEBUG", "") not in ("", "0"):
                raise
            code, message = _failure(exc, ctx.invoked_subcommand in _RUN_COMMANDS)
            error_line(message)
            raise typer.Exit(code) from None

    def get_command(self, ctx, cmd_name):
        command = super().get_command(ctx, cmd_name)
        if command is not None:
            _untyped_flags(command, ctx)
        return command

    def format_help(self, ctx, formatter):
        _untyped_flags(self, ctx)
        super().format_help(ctx, formatter)


@contextmanager
def _usage_in_one_line() -> Iterator[None]:
    """A usage error (an unknown option or command, a missing argument, a value of the wrong type) as one
    ``error:`` line naming the help to read, exit code 2, rather than Typer's framed box of several lines."""
    try:
        yield
    except typer.TyperException as exc:
        if getattr(exc, "exit_code", None) != EXIT_USAGE or not hasattr(exc, "ctx"):
            raise
        where = exc.ctx.command_path if exc.ctx is not None else "allscan"
        raise usage_error(f"{exc.format_message()} (see {where} --help)") from None


def _untyped_flags(command, ctx) -> None:
    """Show flags in help without a ``<bool>`` type: a flag takes no value."""
    for param in command.get_params(ctx):
        if getattr(param, "is_flag", False):
            param.metavar = ""


def _failure(exc: BaseException, run: bool) -> tuple[int, str]:
    """The exit code and the line for a failure that escaped a command."""
    from allscan.fileio import OutputError, describe

    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED, "interrupted"
    if isinstance(exc, OutputError):
        kept = "; results already stored are kept: rerun the same command to finish" if run else ""
        return EXIT_IO, f"{exc}{kept}"
    if isinstance(exc, OSError):
        where = f"{exc.filename}: " if exc.filename else ""
        return EXIT_IO, f"{where}{describe(exc)}"
    if isinstance(exc, MemoryError):
        return EXIT_IO, "out of memory"
    return EXIT_INTERNAL, (f"internal error ({type(exc).__name__}: {exc}); this is a bug in allscan,"
                           " ALLSCAN_DEBUG=1 shows the traceback")


app = typer.Typer(
    cls=_OneLineErrors,
    help="Screen peripheral blood smear images for Acute Lymphoblastic Leukemia (research use only).",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
)
console = Console()
err = Console(stderr=True, soft_wrap=True)  # notes, warnings and errors: a line each, whole in logs and pipes
if not console.is_terminal:
    console.width = max(console.width, 120)  # logs and pipes get whole tables, not 80 columns


def _version(value: bool) -> None:
    if value:
        console.print(f"allscan {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Show the version and exit.")] = False,
) -> None:
    """allscan: an ensemble of four CNNs that flags blood smear fields with ALL."""


def error_line(message: str) -> None:
    """Print ``message`` as one ``error:`` line on stderr."""
    err.print(f"[bold red]error:[/] {escape(' '.join(_plain(message).split()))}", highlight=False)


def warning_line(message: str) -> None:
    """Print ``message`` as one ``warning:`` line on stderr."""
    err.print(f"[yellow]warning:[/] {escape(_plain(message))}", highlight=False)


def _plain(message: str) -> str:
    """``message`` without terminal colour codes (Ray and other libraries colour their errors)."""
    return Text.from_ansi(message).plain


def usage_error(message: str) -> typer.Exit:
    """Print ``message`` as an error line; the exit to raise for a usage error (code 2, nothing done)."""
    error_line(message)
    return typer.Exit(EXIT_USAGE)

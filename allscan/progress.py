"""The live Rich display of a predict run and its closing summary table."""

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from allscan.predict import PredictSummary
from allscan.results import ImageResult, RunCounts


class _RateColumn(TextColumn):
    def __init__(self):
        super().__init__("")

    def render(self, task):
        speed = task.finished_speed or task.speed
        return f"{speed:.1f} img/s" if speed else "– img/s"


class LiveProgress:
    """Progress bar with images done/total, images/s, ETA and live verdict counts.

    Animated only on a terminal; ``quiet`` shows nothing.
    """

    def __init__(self, console: Console, quiet: bool = False):
        self.console = console
        self.counts = RunCounts()
        self.progress = Progress(
            TextColumn("[bold]scoring"),
            BarColumn(),
            MofNCompleteColumn(),
            _RateColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[tally]}"),
            console=console,
            disable=quiet or not console.is_terminal,
            transient=False,
        )
        self.task = None

    def __enter__(self) -> "LiveProgress":
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.stop()

    def _tally(self) -> str:
        c = self.counts
        return (
            f"[red]ALL {c.all_}[/] [green]normal {c.normal}[/] [yellow]review {c.review}[/] "
            f"[magenta]error {c.errors}[/]"
        )

    def start(self, total: int) -> None:
        self.counts.total = total
        self.task = self.progress.add_task("scoring", total=total, tally=self._tally())

    def result(self, result: ImageResult, skipped: bool) -> None:
        self.counts.add(result, skipped)
        self.progress.update(self.task, advance=1, tally=self._tally())


def summary_table(summary: PredictSummary) -> Table:
    c = summary.counts
    table = Table(title="allscan predict", show_header=True)
    table.add_column("verdict")
    table.add_column("images", justify="right")
    table.add_row("[red]ALL[/]", str(c.all_))
    table.add_row("[green]normal[/]", str(c.normal))
    table.add_row("[magenta]error[/]", str(c.errors))
    table.add_row("[yellow]flagged for review[/]", str(c.review))
    table.add_row("total", f"{c.done} of {c.total}")
    table.add_row("skipped (already scored)", str(c.skipped))
    return table

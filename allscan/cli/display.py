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

from allscan.run.batch import PredictSummary
from allscan.results.types import ImageResult, RunCounts


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
            f"[cyan]out of domain {c.out_of_domain}[/] [magenta]error {c.errors}[/]"
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
    table.add_row("[cyan]out of domain[/] (also flagged)", str(c.out_of_domain))
    table.add_row("total", f"{c.done} of {c.total}")
    table.add_row("skipped (already scored)", str(c.skipped))
    return table


class WatchDisplay:
    """Live view of a watch: recent images with verdicts, counts, queue length, images/s.

    With ``quiet`` (or when stdout is not a terminal) it logs one line per image instead.
    """

    def __init__(self, console: Console, stats, quiet: bool = False):
        from rich.live import Live

        self.console = console
        self.stats = stats
        self.counts = RunCounts()
        self.lines = quiet or not console.is_terminal
        self.live = None if self.lines else Live(self._render(), console=console, refresh_per_second=4)

    def __enter__(self) -> "WatchDisplay":
        if self.live is not None:
            self.live.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.live is not None:
            self.live.stop()

    def start(self, total: int) -> None:
        pass

    def result(self, result: ImageResult, skipped: bool) -> None:
        self.counts.add(result, skipped)
        if self.lines:
            p = f"{result.score.p_all:.3f}" if result.score else "-"
            review = " review" if result.score and result.score.review else ""
            review += " out-of-domain" if result.score and result.score.out_of_domain else ""
            extra = f" duplicate of {result.duplicate_of}" if result.duplicate_of else ""
            reason = f" {result.error}" if result.error else ""
            self.console.print(f"{result.verdict}{review} p_all={p} {result.path}{extra}{reason}",
                               markup=False, highlight=False, soft_wrap=True)
        else:
            self.live.update(self._render())

    def refresh(self) -> None:
        if self.live is not None:
            self.live.update(self._render())

    def _render(self):
        import time

        from rich.console import Group

        c = self.counts
        elapsed = max(time.monotonic() - self.stats.started, 1e-6)
        head = (f"[red]ALL {c.all_}[/]  [green]normal {c.normal}[/]  [yellow]review {c.review}[/]  "
                f"[cyan]out of domain {c.out_of_domain}[/]  [magenta]error {c.errors}[/]  queue {self.stats.queued}  "
                f"{self.stats.scored / elapsed:.2f} img/s since start")
        table = Table(show_header=True, header_style="bold", expand=False)
        for column in ("image", "verdict", "p_all", "review", "domain"):
            table.add_column(column)
        for r in getattr(self.stats, "recent", []):
            table.add_row(r.path.name, r.verdict, f"{r.score.p_all:.3f}" if r.score else "-",
                          "yes" if r.score and r.score.review else "",
                          r.score.domain.domain if r.score and r.score.domain else "")
        return Group(head, table)

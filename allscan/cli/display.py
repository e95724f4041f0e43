"""What the command line shows: the live views of predict and watch, and the tables and lines that
report results, models, training and figures."""

import math
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from allscan.cli.app import console, err
from allscan.images import IMAGE_SUFFIXES
from allscan.paths import path_text
from allscan.results.types import CellFindings, ImageResult, RunCounts

if TYPE_CHECKING:
    from allscan.results.types import Score
    from allscan.run.batch import RunSummary


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


def summary_table(summary: "RunSummary") -> Table:
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
    if summary.cells:
        table.add_row("white cells found", str(c.cells))
        table.add_row("[red]blasts[/] among them", f"{c.blasts} ({100 * c.blasts / c.cells:.1f}%)" if c.cells else "0")
    return table


class WatchDisplay:
    """Live view of a watch: recent images with verdicts, counts, queue length, images/s.

    With ``quiet`` (or when stdout is not a terminal) it logs one line per image instead.
    """

    def __init__(self, console: Console, stats, quiet: bool = False):
        from rich.live import Live

        self.console = console
        self.stats = stats
        self.tally: Counter[str] = Counter()
        self._labels: dict[Path, tuple[str, ...]] = {}
        self.lines = quiet or not console.is_terminal
        self._notice = ""
        self._output_notice = ""
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
        self._count(result)
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
            return
        notice = getattr(self.stats, "notice", "")
        if notice != self._notice:
            self._notice = notice
            line = f"warning: {notice}" if notice else "the watched folder is back: watching it again"
            self.console.print(line, markup=False, highlight=False, soft_wrap=True)
        problem = getattr(self.stats, "output_notice", "")
        if problem != self._output_notice:
            self._output_notice = problem
            line = f"warning: {problem}" if problem else "the outputs are written again"
            self.console.print(line, markup=False, highlight=False, soft_wrap=True)

    def _render(self):
        from rich.console import Group

        table = Table(show_header=True, header_style="bold", expand=False)
        for column in ("image", "verdict", "p_all", "review", "domain"):
            table.add_column(column)
        for r in getattr(self.stats, "recent", []):
            table.add_row(escape(path_text(r.path.name)), r.verdict, f"{r.score.p_all:.3f}" if r.score else "-",
                          "yes" if r.score and r.score.review else "",
                          r.score.domain.domain if r.score and r.score.domain else "")
        notices = (getattr(self.stats, "notice", ""), getattr(self.stats, "output_notice", ""))
        lines = [Text(f"warning: {notice}", style="bold red") for notice in notices if notice]
        return Group(*lines, self.summary_line(), table)

    def summary_line(self) -> Text:
        """Counts of files by their latest row, queue length and rate."""
        import time

        t = self.tally
        elapsed = max(time.monotonic() - self.stats.started, 1e-6)
        return Text.from_markup(
            f"[red]ALL {t['ALL']}[/]  [green]normal {t['normal']}[/]  [yellow]review {t['review']}[/]  "
            f"[cyan]out of domain {t['out of domain']}[/]  [magenta]error {t['error']}[/]  "
            f"queue {self.stats.queued}  {self.stats.scored / elapsed:.2f} img/s since start")

    def _count(self, result: ImageResult) -> None:
        """Count the file under its latest row: one stored again (an error row, then scored once its
        write completed) moves from its old counts to its new ones, as its row does in the output."""
        labels = (result.verdict,)
        if result.score is not None:
            labels += ("review",) * result.score.review + ("out of domain",) * result.score.out_of_domain
        self.tally.subtract(self._labels.get(result.path, ()))
        self.tally.update(labels)
        self._labels[result.path] = labels


def print_run_summary(summary: "RunSummary", report: Path | None, pdf: Path | None = None) -> None:
    """The closing lines of a predict run: counts, where the outputs are, what was skipped."""
    console.print(summary_table(summary))
    console.print(f"results: [bold]{escape(str(summary.out))}[/]  (store: {escape(str(summary.store))})")
    for what, path in (("report", report), ("printable report", pdf)):
        if path:
            console.print(f"{what}: [bold]{escape(str(path))}[/]")
    if summary.counts.skipped:
        console.print(f"{summary.counts.skipped} images were already scored with these models and were skipped"
                      " (--rescore to score them again)")


def print_run_notes(summary: "RunSummary") -> None:
    """What a predict run left undone, on stderr (also with ``--quiet``): unread formats, inputs left out, images
    the specimen pattern or map did not place, an interruption."""
    if summary.unread:
        formats = ", ".join(f"{count} {suffix}" for suffix, count in summary.unread)
        err.print(escape(f"note: files in formats allscan does not read were left out ({formats}); convert them"
                         " to JPEG, PNG or TIFF to score them"), highlight=False)
    if summary.left_out:
        err.print(escape(f"note: left out {', '.join(summary.left_out)}: named as inputs, but allscan scores only files"
                         f" named {' '.join(sorted(IMAGE_SUFFIXES))} (not hidden, not its own outputs)"),
                  highlight=False)
    unplaced, note = summary.unplaced
    if unplaced:
        err.print(escape(f"note: {unplaced} of {len(summary.images)} images {note}"), highlight=False)
    if summary.interrupted:
        err.print("[yellow]interrupted: results so far were written; rerun the same command to finish[/]")


def watch_ready_line(folder: Path, out: Path, members: list[str], site: Path | None, catch_up: int) -> None:
    """The one line ``watch`` prints once it watches, also with ``--quiet``."""
    site_note = f", site profile {site}" if site else ""
    console.print(escape(f"ready: watching {folder} → {out} with {len(members)} models ({', '.join(members)}"
                         f"{site_note}); {catch_up} images to catch up; Ctrl-C to stop"),
                  soft_wrap=True, highlight=False)


def print_explanation(image: Path, score: "Score", with_site: bool) -> None:
    """Each model's and the ensemble's probability, the verdict, scale, fields and domain of one image."""
    console.print(escape(path_text(image)), soft_wrap=True, highlight=False)  # whole, for logs and pipes too
    table = Table()
    table.add_column("model")
    table.add_column("p(ALL)", justify="right")
    for name, p in score.per_model.items():
        table.add_row(name, f"{p:.4f}")
    table.add_row("[bold]ensemble[/]" + (" (site profile)" if with_site else ""), f"[bold]{score.p_all:.4f}[/]")
    console.print(table)
    console.print(f"verdict [bold]{score.verdict}[/]; agreement {score.agreement}/{len(score.per_model)}"
                  + ("; [yellow]flagged for review[/]" if score.review else ""))
    info = score.domain
    scale = "whole image (no scale estimate)" if info.scale is None else f"rescaled ×{info.scale:.3f}"
    console.print(f"{scale}; {info.tiles} field(s) scored; domain [bold]{info.domain or '-'}[/]"
                  + (f" (score {info.domain_score:.2f})" if info.domain_score is not None else ""))
    if score.cells is not None:
        console.print(_cell_line(score.cells))
    if info.notes:
        console.print(escape(f"notes: {info.notes}"), soft_wrap=True, highlight=False)


def _cell_line(cells: CellFindings) -> str:
    """White cells found, blasts among them, and the highest p(blast)s."""
    if not cells.cells:
        return "white cells: none found"
    top = ", ".join(f"{c.p_blast:.3f}" for c in cells.most_blast_like(5))
    return (f"white cells: {cells.count}; blasts [bold]{cells.blasts}[/] ({cells.blast_pct:.1f}%) at p(blast) ≥ "
            f"{cells.threshold:.3f}; most blast-like: {top}")


def models_table(folder: Path, manifest, registry: dict) -> None:
    """The models in a folder: architecture, input size, weight, validation figures, checksums."""
    table = Table(title=f"models in {folder}")
    for column in ("name", "architecture", "input", "weight", "val acc", "val bal. acc", "val AUC"):
        table.add_column(column, no_wrap=column == "name")
    for entry in manifest.models.values():
        v = entry.validation
        arch = entry.architecture or (registry[entry.name].architecture if entry.name in registry else "")
        table.add_row(
            entry.name, arch, f"{entry.input_size}px", f"{manifest.ensemble.weights.get(entry.name, 0):.2f}",
            *(f"{v[k]:.3f}" if k in v else "–" for k in ("accuracy", "balanced_accuracy", "roc_auc")),
        )
    console.print(table)
    for entry in manifest.models.values():
        console.print(_files_line(entry), soft_wrap=True)
    e = manifest.ensemble
    console.print(f"threshold {e.threshold:.3f}, review band {e.review_band[0]:.3f}–{e.review_band[1]:.3f},"
                  f" blank box {manifest.blank_box or 'none'}, digest {manifest.digest}")


def _files_line(entry, folder: str = "") -> str:
    """A member's ``.keras`` file and checksum, and the precision of its OpenVINO files where it has them."""
    converted = entry.openvino
    runtime = (f"OpenVINO {converted.precision} ({folder}{converted.xml})" if converted is not None
               else "no OpenVINO files: runs in Keras")
    return f"{entry.name}: {folder}{entry.file}  sha256 {entry.sha256}; {runtime}"


def cell_models_table(folder: Path, manifest) -> None:
    """The cell classifier in a models folder: its members, their field-level validation figures and checksums."""
    table = Table(title=f"cell classifier in {folder}")
    for column in ("name", "architecture", "input", "weight", "ALL fields with a blast", "benign cells called blast",
                   "field AUC"):
        table.add_column(column, no_wrap=column == "name")
    for entry in manifest.models.values():
        v = entry.validation
        table.add_row(entry.name, entry.architecture, f"{entry.input_size}px",
                      f"{manifest.ensemble.weights.get(entry.name, 0):.2f}",
                      *(f"{v[k]['rate']:.3f}" if k in v else "–"
                        for k in ("all_fields_with_blast", "benign_cells_called_blast")),
                      f"{v['top_p_auc']:.3f}" if "top_p_auc" in v else "–")
    console.print(table)
    for entry in manifest.models.values():
        console.print(_files_line(entry, "cells/"), soft_wrap=True)
    console.print(f"cell threshold {manifest.ensemble.threshold:.3f}, digest {manifest.digest}")


class TrainingProgress:
    """A bar of epochs for one model, with a line per finished epoch."""

    def __init__(self, name: str, epochs: int):
        self.progress = Progress(TextColumn(f"[bold]{name}"), BarColumn(), MofNCompleteColumn(), TextColumn("epochs"),
                                 TimeElapsedColumn(), console=console)
        self.task = self.progress.add_task(name, total=epochs)

    def __enter__(self) -> "TrainingProgress":
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.stop()

    def started(self, done: int, total: int) -> None:
        self.progress.update(self.task, completed=done, total=total)

    def epoch(self, e) -> None:
        self.progress.update(self.task, completed=e.epoch)
        self.progress.console.print(
            f"epoch {e.epoch:>3}  loss {e.loss:.4f}  val_loss {e.val_loss:.4f}  val_acc {e.val_accuracy:.4f}"
            f"  val_auc {e.val_auc:.4f}  ({e.seconds:.0f}s)"
        )


def print_shipped(entry, result, out: Path) -> None:
    v = entry.validation
    console.print(f"[green]shipped[/] {out / entry.file}: best epoch {result.best_epoch} of {result.epochs_run} run,"
                  f" val accuracy {v['accuracy']:.4f}, balanced {v['balanced_accuracy']:.4f}, AUC {v['roc_auc']:.4f}")


def print_cells_shipped(folder: Path, manifest) -> None:
    """The cell classifier shipped, and its field-level figures on validation at its threshold."""
    config = manifest.ensemble
    console.print(f"[green]shipped[/] the cell classifier in {folder}: {', '.join(manifest.models)};"
                  f" threshold {config.threshold:.3f} ({config.tuned_on})")
    for name, entry in manifest.models.items():
        v = entry.validation
        console.print(f"  {name}: ALL fields with a blast {v['all_fields_with_blast']['rate']:.3f}, benign cells"
                      f" called blast {v['benign_cells_called_blast']['rate']:.3f}, field AUC {v['top_p_auc']:.4f}")


def _figure(d: dict, key: str) -> str:
    """A figure and its interval below it; "–" for one without a denominator (None)."""
    if d[key] is None:
        return "–"
    interval = d["intervals"].get(key)
    return f"{d[key]:.4f}" + (f"\n{interval[0]:.3f}-{interval[1]:.3f}" if interval and None not in interval else "")


def metrics_table(title: str, rows: dict, review_rows: tuple[str, ...] = ("ensemble",)) -> Table:
    """Figures per model (or per run), a column each, with their 95% intervals, confusion counts and review
    counts. A column per figure needed some 190 characters: narrower terminals cut every number short; five
    columns of intervals fit 80 characters with the padding collapsed and no outer edge."""
    table = Table(title=f"{title}; 95% intervals: Wilson for proportions, bootstrap over images otherwise",
                  collapse_padding=True, show_edge=False, pad_edge=False)
    headers = {"accuracy": "accuracy", "precision": "precision", "recall": "recall", "specificity": "specificity",
               "f1": "F1", "balanced_accuracy": "bal accuracy", "roc_auc": "ROC AUC", "brier": "Brier", "ece": "ECE"}
    table.add_column("")
    for name in rows:
        table.add_column(name, justify="right", overflow="fold")
    figures = [m.to_dict() for m in rows.values()]
    table.add_row("n", *(str(d["n"]) for d in figures))
    for key, header in headers.items():
        table.add_row(header, *(_figure(d, key) for d in figures))
    table.add_row("tn / fp", *(" / ".join(map(str, d["confusion_matrix"][0])) for d in figures))
    table.add_row("fn / tp", *(" / ".join(map(str, d["confusion_matrix"][1])) for d in figures))
    table.add_row("review", *(str(d["review"]) if name in review_rows else "" for name, d in zip(rows, figures)))
    return table


def print_evaluation(split: str, box: str, result) -> None:
    console.print(metrics_table(f"{split} split, label box {box}", {**result.models, "ensemble": result.ensemble}))
    cells = result.cells
    if cells is not None:
        console.print(f"cells (threshold {cells.threshold:.3f}): ALL fields with a cell called blast"
                      f" {_rate(cells.all_fields_with_blast)}; benign fields' cells called blast"
                      f" {_rate(cells.benign_cells_called_blast)}; benign fields with one"
                      f" {_rate(cells.benign_fields_with_blast)}; field AUC of the top p(blast)"
                      f" {_number(cells.top_p_auc)}")


def _number(value: float) -> str:
    return f"{value:.4f}" if math.isfinite(value) else "–"


def _rate(figure: dict) -> str:
    if figure["rate"] is None:
        return f"{figure['count']}/{figure['n']} = –"
    low, high = figure["ci95"]
    return f"{figure['count']}/{figure['n']} = {100 * figure['rate']:.1f}% ({100 * low:.1f}-{100 * high:.1f}%)"


def print_shortcut_check(check) -> None:
    """The ensemble with the label box raw and swapped, the flips, and where Grad-CAM's heat lies."""
    n, flips, heat = check.raw.ensemble.n, check.flips_raw_to_swap, check.heatmaps
    console.print(metrics_table("ensemble with the label box raw / swapped",
                                {"raw": check.raw.ensemble, "swapped": check.swapped.ensemble}, ("raw", "swapped")))
    console.print(f"verdicts flipped by swapping label boxes between classes: {flips} of {n}"
                  f" ({100 * flips / max(n, 1):.2f}%)")
    console.print(f"raw ALL verdicts whose hottest 5% of Grad-CAM lies mostly in the label box: {heat.in_box}"
                  f" of {heat.images}; mean share in the box {heat.mean_fraction:.3f} (box is"
                  f" {heat.box_area_fraction:.3f} of the image)")


def print_adapted(out: Path, result) -> None:
    """What ``adapt`` left out, its cross-validated figures with intervals, and its warnings."""
    f = result.figures
    _print_cross_validated(f"site profile {out}: cross-validated on {f['n_ALL']} ALL + {f['n_normal']} normal images",
                           "threshold", result)


def print_cell_heads(out: Path, result) -> None:
    """What ``adapt --cells`` left out, its cross-validated figures with intervals, and its warnings."""
    f = result.figures
    _print_cross_validated(f"cell heads of site profile {out}: cross-validated on {f['n_blast']} blast + "
                           f"{f['n_normal']} normal crops", "cell threshold", result)


def _print_cross_validated(title: str, threshold: str, result) -> None:
    for path, reason in result.skipped:
        err.print(f"[yellow]left out[/] {escape(path_text(path))}: {escape(reason)}")
    f = result.figures
    console.print(escape(title), soft_wrap=True)
    table = Table()
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_column("95% interval", justify="right")
    for name in ("roc_auc", "sensitivity", "specificity"):
        low, high = f[f"{name}_95ci"]
        table.add_row(name.replace("_", " "), f"{f[name]:.3f}", f"{low:.3f} – {high:.3f}")
    console.print(table)
    console.print(f"{threshold} {f['threshold']:.2f}; {f['method']}; {result.seconds:.0f} s")
    for warning in result.warnings:
        err.print(f"[yellow]warning:[/] {escape(warning)}")

"""Committing results: each batch is scored, marked for duplicate contents, written to a sink (the
results store, or memory for the API's in-memory calls), its cells written as GeoJSON if asked, and only then
reported.

One committer serves ``allscan predict``, ``watch``, the API and every engine: engines hand it
prepared images (:meth:`Committer.add`) or finished results (:meth:`Committer.commit`) and ask it
what is already stored; they never see the sink.
"""

import os
from collections import defaultdict, deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Protocol

from allscan.paths import path_text, real_path_text
from allscan.results.geojson import write_geojson
from allscan.results.types import ImageResult, RunCounts, Score
from allscan.run.job import Prepared, to_results
from allscan.run.specimens import Specimens
from allscan.scoring.heatmaps import HeatmapOptions, figure_path
from allscan.scoring.pipeline import Pipeline


class Observer(Protocol):
    """Receives progress: the live display implements it; tests may record it."""

    def start(self, total: int) -> None: ...

    def result(self, result: ImageResult, skipped: bool) -> None: ...


class Silent:
    """An observer that reports nothing."""

    def start(self, total: int) -> None:
        pass

    def result(self, result: ImageResult, skipped: bool) -> None:
        pass


class ResultSink(Protocol):
    """Where committed results go: :class:`~allscan.results.store.ResultStore` or :class:`MemoryResults`."""

    def score_for(self, sha256: str) -> Score | None: ...

    def scored_hashes(self) -> frozenset[str]: ...

    def first_file_for(self, sha256: str) -> tuple[str, str] | None: ...

    def figures(self) -> dict[str, str]: ...

    def add(self, results: Iterable[ImageResult]) -> None: ...

    def results(self, paths: Iterable[Path] | None = None) -> Iterator[ImageResult]: ...


class MemoryResults:
    """A sink in memory, for scoring that writes nothing: rows come back in the order they were asked for."""

    def __init__(self):
        self._rows: dict[str, deque[ImageResult]] = defaultdict(deque)
        self._scores: dict[str, Score] = {}
        self._firsts: dict[str, tuple[str, str]] = {}

    def score_for(self, sha256: str) -> Score | None:
        return self._scores.get(sha256)

    def scored_hashes(self) -> frozenset[str]:
        return frozenset(self._scores)

    def first_file_for(self, sha256: str) -> tuple[str, str] | None:
        return self._firsts.get(sha256)

    def figures(self) -> dict[str, str]:
        return {r.sha256: r.heatmap for rows in self._rows.values() for r in rows if r.heatmap}

    def add(self, results: Iterable[ImageResult]) -> None:
        for result in results:
            self._rows[str(result.path)].append(result)
            if result.score is not None:
                self._scores.setdefault(result.sha256, result.score)
                self._firsts.setdefault(result.sha256, (path_text(result.path), real_path_text(result.path)))

    def results(self, paths: Iterable[Path | str] | None = None) -> Iterator[ImageResult]:
        """One row per path asked for, in that order (a path asked for twice gives its rows in turn)."""
        names = sorted(self._rows) if paths is None else [str(p) for p in paths]
        taken: dict[str, int] = defaultdict(int)
        for name in names:
            rows = self._rows.get(name)
            if rows:
                yield rows[min(taken[name], len(rows) - 1)]
                taken[name] += 1


def geojson_path(folder: Path, result: ImageResult) -> Path:
    """``folder/STEM-SHA.geojson``: named as the image's heatmap figure is, so the two sort together."""
    return figure_path(folder, result.path, result.sha256).with_suffix(".geojson")


class Committer:
    """Scores prepared images in batches and commits each batch to the sink before reporting it, each
    result with its specimen when ``specimens`` assigns them; with ``cells_geojson``, each committed image's
    cells are written there as GeoJSON (:func:`geojson_path`), stored ones included. A content already scored
    keeps its heatmap figure where one is on disk (in this run's heatmaps folder, when it has one); one that this
    run wants a figure for and has none there is scored again to draw it."""

    def __init__(self, pipeline: Pipeline, sink: ResultSink, batch_size: int, observer: Observer | None = None,
                 heatmaps: HeatmapOptions | None = None, specimens: Specimens | None = None,
                 cells_geojson: Path | None = None):
        self.pipeline = pipeline
        self.heatmaps = heatmaps
        self.specimens = specimens
        self.cells_geojson = cells_geojson
        self.sink = sink
        self.batch_size = batch_size
        self.observer = observer or Silent()
        self.pending: list[Prepared] = []
        self.counts = RunCounts()
        self._figures: dict[str, str] | None = None

    def known_hashes(self) -> frozenset[str]:
        """Contents the sink already holds a score for, and a heatmap figure if this run wants one: an engine
        need not decode them."""
        known = self.sink.scored_hashes()
        if self.heatmaps is None:
            return known
        return frozenset(sha for sha in known
                         if self._figure(sha) or not self.heatmaps.wanted(self.sink.score_for(sha)))

    def _figure(self, sha256: str) -> str:
        """The heatmap figure of this content that is on disk (in this run's heatmaps folder, if any), or ``""``."""
        if self._figures is None:
            self._figures = {sha: path for sha, path in self.sink.figures().items() if self._usable_figure(Path(path))}
        return self._figures.get(sha256, "")

    def _usable_figure(self, path: Path) -> bool:
        """Whether a stored figure is on disk and, when this run writes figures, in its folder: the folder it was
        given gets every figure, not a pointer to an earlier run's."""
        if not path.is_file():
            return False
        return self.heatmaps is None or path.resolve().parent == Path(self.heatmaps.folder).resolve()

    def stored(self, paths: Sequence[Path]) -> list[ImageResult]:
        """The rows the sink already holds, with a score, for these paths."""
        return [r for r in self.sink.results(paths) if r.score is not None]

    def add(self, item: Prepared) -> None:
        """Take one prepared image: an error or a known content is committed at once, the rest batched."""
        if item.error:
            self.commit([ImageResult(item.path, item.sha256, error=item.error)], skipped=False)
            return
        if item.known or item.fields is None:
            score = self.sink.score_for(item.sha256)
            if score is not None:
                result = ImageResult(item.path, item.sha256, item.width, item.height, score,
                                     heatmap=self._figure(item.sha256))
                self.commit([result], skipped=True)
                return
        self.pending.append(item)
        if len(self.pending) >= self.batch_size:
            self.flush()

    def flush(self) -> None:
        """Score and commit what is pending."""
        if not self.pending:
            return
        batch, self.pending = self.pending, []
        self.commit(to_results(self.pipeline, batch, self.heatmaps, self.batch_size))

    def already_stored(self, result: ImageResult) -> None:
        """Report a row the sink already holds for this path, without scoring or storing it again."""
        self._write_geojson([result])
        self.counts.add(result, skipped=True)
        self.observer.result(result, True)

    def commit(self, results: list[ImageResult], skipped: bool = False) -> None:
        """Store a batch of results (durable on return), then count and report them."""
        firsts: dict[str, str] = {}
        results = [self._mark_duplicate(r, firsts) for r in results]
        if self.specimens is not None:  # stored and reported with its specimen, as a watch appends it to a CSV
            results = [replace(r, specimen=self.specimens(r.path).specimen) for r in results]
        self.sink.add(results)
        if self._figures is not None:
            self._figures.update((r.sha256, r.heatmap) for r in results if r.heatmap)
        self._write_geojson(results)
        for result in results:
            self.counts.add(result, skipped)
            self.observer.result(result, skipped)

    def _write_geojson(self, results: list[ImageResult]) -> None:
        if self.cells_geojson is None:
            return
        for result in results:
            if result.score is not None and result.score.cells is not None:
                write_geojson(geojson_path(self.cells_geojson, result), result.score.cells)

    def _mark_duplicate(self, result: ImageResult, batch_firsts: dict[str, str]) -> ImageResult:
        """Mark a file whose content was already stored (or seen earlier in this batch) under another path."""
        if result.score is None:
            return result
        own = path_text(result.path)
        first, real = self.sink.first_file_for(result.sha256) or (batch_firsts.setdefault(result.sha256, own), "")
        if first == own or real == real_path_text(result.path) or _same_file(first, result.path):
            return result
        return replace(result, duplicate_of=first)


def _same_file(stored: str, path: Path) -> bool:
    """Whether the stored path names ``path``'s file, spelt otherwise (relative and absolute, through a link)."""
    try:
        return os.path.samefile(stored, path)
    except (OSError, ValueError):
        return False

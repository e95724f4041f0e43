"""A run's output files, written from the results store: the CSV or workbook with its run metadata, specimens
and cell tables, and the HTML and PDF reports."""

import platform
import shlex
import sys
from collections import Counter
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from allscan import __version__
from allscan.paths import path_text
from allscan.results.pdf import PdfReport, write_pdf
from allscan.results.report import ReportPictures, write_report
from allscan.results.store import ResultStore
from allscan.results.tables import RunInfo, write_results
from allscan.results.types import NOT_SCORED, RunCounts
from allscan.run.specimens import Specimens
from allscan.scoring.pipeline import Pipeline
from allscan.scoring.specimens import summarise

if TYPE_CHECKING:
    from allscan.models.ensemble import Ensemble


def run_info(pipeline: Pipeline, started: datetime, counts: RunCounts, command: str | None = None) -> RunInfo:
    """The run's metadata: version, times, host, command, models (with the runtime that ran each), operating
    point, counts, domain, and whether the white cells were looked for (with the cell models, if they were)."""
    config = pipeline.config
    return RunInfo(
        allscan_version=__version__,
        started=started.isoformat(timespec="seconds"),
        finished=datetime.now().astimezone().isoformat(timespec="seconds"),
        host=platform.node(),
        command=command or " ".join(shlex.quote(path_text(a)) for a in sys.argv),
        models_digest=pipeline.ensemble.manifest.digest,
        models=_models(pipeline.ensemble),
        threshold=config.threshold,
        review_band=config.review_band,
        counts={
            "images": counts.done,
            "ALL": counts.all_,
            "normal": counts.normal,
            "review": counts.review,
            "out of domain": counts.out_of_domain,
            "errors": counts.errors,
            "skipped (already scored)": counts.skipped,
            **({"cells": counts.cells, "blasts": counts.blasts} if pipeline.cells is not None else {}),
            **({NOT_SCORED: counts.unscored} if counts.unscored else {}),
        },
        results_digest=pipeline.digest,
        domain=pipeline.describe(),
        cells=_cells(pipeline),
        specimen_rule=asdict(pipeline.specimen_rule) | {"review_band": list(pipeline.specimen_rule.review_band)},
    )


def _models(ensemble: "Ensemble") -> list[dict]:
    """Each member's file, checksum, vote weight and the runtime that ran it."""
    manifest = ensemble.manifest
    runtimes = {m.name: m.runtime for m in ensemble.members}
    return [{"name": m.name, "file": m.file, "sha256": m.sha256, "weight": manifest.ensemble.weights.get(m.name, 0.0),
             "runtime": runtimes[m.name]} for m in manifest.models.values()]


def _cells(pipeline: Pipeline) -> dict:
    classifier = pipeline.cells
    if classifier is None:
        return {"looked_for": False}
    return {"looked_for": True, "models_digest": classifier.ensemble.manifest.digest,
            "threshold": classifier.threshold, "models": _models(classifier.ensemble)}


def write_outputs(out: Path, store: ResultStore, images: list[Path], pipeline: Pipeline, started: datetime,
                  skipped: int = 0, command: str | None = None, report: Path | None = None,
                  specimens: Specimens | None = None, pdf: PdfReport | None = None,
                  pictures: ReportPictures | None = None, keep_specimens: bool = False) -> RunCounts:
    """Write the results file (and the HTML and PDF reports, if asked) for ``images`` from the store, after
    recording each image's specimen (``specimens`` assigns them [default: by folder]; with ``keep_specimens``
    only those of rows stored without one, as a watch's rows keep theirs when their images are moved) and
    judging each specimen; ``pictures`` makes the HTML report's thumbnails and cell crops [default: from each
    image's file]."""
    unassigned = [r.path for r in store.results(images) if not r.specimen] if keep_specimens else images
    specimens = specimens or Specimens()
    notes = _assign_specimens(store, unassigned, specimens)
    counts = RunCounts(total=len(images))
    stored = set()
    for result in store.results(images):
        counts.add(result)
        stored.add(result.path)
    counts.skipped = skipped
    info = run_info(pipeline, started, counts, command)
    unscored = Counter(specimens(path).specimen for path in images if path not in stored)  # a run cut short
    judged = summarise(store.results(images), pipeline.specimen_rule, notes, unscored)
    write_results(out, lambda: store.results(images), info, counts, judged)
    if report is not None:
        write_report(report, store.results(images), info, counts, judged, pictures)
    if pdf is not None:
        write_pdf(pdf.path, store.results(images), info, counts, judged, pdf.paper)
    return counts


def _assign_specimens(store: ResultStore, images: list[Path], specimens: Specimens) -> dict[str, tuple[str, ...]]:
    """Store each image's specimen; the notes of specimens whose assignment needs saying."""
    assigned = {str(path): specimens(path) for path in images}
    store.set_specimens({path: a.specimen for path, a in assigned.items()})
    notes: dict[str, tuple[str, ...]] = {}
    for a in assigned.values():
        if a.note and a.note not in notes.get(a.specimen, ()):
            notes[a.specimen] = (*notes.get(a.specimen, ()), a.note)
    return notes

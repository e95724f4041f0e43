"""A run's output files, written from the results store: the CSV or workbook with its run metadata,
and the HTML report."""

import platform
import shlex
import sys
from datetime import datetime
from pathlib import Path

from allscan import __version__
from allscan.results.report import write_report
from allscan.results.store import ResultStore
from allscan.results.tables import RunInfo, write_results
from allscan.results.types import RunCounts
from allscan.scoring.pipeline import Pipeline


def run_info(pipeline: Pipeline, started: datetime, counts: RunCounts, command: str | None = None) -> RunInfo:
    """The run's metadata: version, times, host, command, models, operating point, counts, domain."""
    manifest = pipeline.ensemble.manifest
    config = pipeline.config
    return RunInfo(
        allscan_version=__version__,
        started=started.isoformat(timespec="seconds"),
        finished=datetime.now().astimezone().isoformat(timespec="seconds"),
        host=platform.node(),
        command=command or " ".join(shlex.quote(a) for a in sys.argv),
        models_digest=manifest.digest,
        models=[
            {"name": m.name, "file": m.file, "sha256": m.sha256, "weight": manifest.ensemble.weights.get(m.name, 0.0)}
            for m in manifest.models.values()
        ],
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
        },
        results_digest=pipeline.digest,
        domain=pipeline.describe(),
    )


def write_outputs(out: Path, store: ResultStore, images: list[Path], pipeline: Pipeline, started: datetime,
                  skipped: int = 0, command: str | None = None, report: Path | None = None) -> RunCounts:
    """Write the results file (and the HTML report, if asked) for ``images`` from the store."""
    counts = RunCounts(total=len(images))
    for result in store.results(images):
        counts.add(result)
    counts.skipped = skipped
    info = run_info(pipeline, started, counts, command)
    write_results(out, lambda: store.results(images), info, counts)
    if report is not None:
        write_report(report, store.results(images), info, counts)
    return counts

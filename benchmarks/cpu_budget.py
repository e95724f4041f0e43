"""Where a run's CPU goes, per image: each step of the per-image work, each model, the cell classifier, and
what an end-to-end run spends beyond them.

The steps are measured apart, on one thread of control, on the same images the run then scores:

- the per-image work (:func:`allscan.run.job.prepare`) image by image, each step's CPU time on its own
  thread (``time.thread_time``): reading and decoding, colour statistics, the red-cell size estimate,
  rescaling, the resizes to the models' inputs, and the white cells (finder, crops and their colour);
- each field model, and the cell classifier, over those images' fields and crops in batches: the
  process's CPU time while it runs (the runtime's own worker threads included);
- then ``allscan predict`` end to end on the same images (the default runtime, the local engine, an
  .xlsx): its CPU time and wall time while scoring, how many cores that kept busy, and the write of the
  output file after the last batch, which runs on one core.

What the run spends beyond the parts measured apart (threads, queues, the store, the results) is the
difference. A run on two cores is CPU-bound, so these figures say what a change can gain.

    python benchmarks/cpu_budget.py [--count 400] [--images DIR] [--models DIR] [--no-cells] [--json]
"""

import argparse
import json
import os
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

STEPS = {
    "allscan.run.job": ("read_file", "decode_bytes"),
    "allscan.domain.fields": ("colour_stats", "estimate_diameter", "rescale", "resize", "cell_crops"),
}
"""The per-image steps timed, by the module whose name for them :func:`~allscan.run.job.prepare` calls."""


def process_cpu() -> float:
    """This process's CPU seconds so far, all threads."""
    times = os.times()
    return times.user + times.system


def thread_timed(module, name: str, totals: dict[str, float]) -> Callable[[], None]:
    """Count the calling thread's CPU time in ``module.name`` into ``totals[name]``; returns the undo."""
    original = getattr(module, name)

    def timed(*args, **kwargs):
        start = time.thread_time()
        try:
            return original(*args, **kwargs)
        finally:
            totals[name] += time.thread_time() - start

    setattr(module, name, timed)
    return lambda: setattr(module, name, original)


def prepare_budget(paths: list[Path], maker) -> tuple[dict[str, float], list]:
    """CPU seconds of each step of :func:`~allscan.run.job.prepare` over ``paths`` (``prepare`` itself:
    all of it), and the prepared images."""
    import importlib

    from allscan.run import job

    totals: dict[str, float] = defaultdict(float)
    undo = [thread_timed(importlib.import_module(module), name, totals)
            for module, names in STEPS.items() for name in names]
    try:
        prepared = []
        for path in paths:
            start = time.thread_time()
            prepared.append(job.prepare(path, maker))
            totals["prepare"] += time.thread_time() - start
    finally:
        for restore in undo:
            restore()
    return dict(totals), prepared


def models_budget(pipeline, fieldsets: list, batch_size: int) -> dict[str, float]:
    """Process CPU seconds of each field model over ``fieldsets``' fields, and of the cell classifier over
    their crops (``cells``), ``batch_size`` images at a time."""
    import numpy as np

    spent = {}
    for member in pipeline.ensemble.members:
        inputs = np.concatenate([fs.inputs[member.input_size] for fs in fieldsets])
        member.outputs(inputs[:batch_size])
        start = process_cpu()
        for i in range(0, len(inputs), batch_size):
            member.outputs(inputs[i:i + batch_size])
        spent[member.name] = process_cpu() - start
    if pipeline.cells is not None:
        found = [fs.cells for fs in fieldsets if fs.cells is not None]
        start = process_cpu()
        for i in range(0, len(found), batch_size):
            pipeline.cells.judge(found[i:i + batch_size])
        spent["cells"] = process_cpu() - start
    return spent


def run_budget(folder: Path, pipeline, batch_size: int, work: Path) -> dict[str, float]:
    """Wall and process CPU seconds of ``allscan predict`` on ``folder``: while scoring, and while writing
    the output file after the last batch."""
    from allscan.run import batch

    marks = {}
    write_outputs = batch.write_outputs

    def timed_write(*args, **kwargs):
        marks["write_started"], marks["write_cpu_started"] = time.monotonic(), process_cpu()
        return write_outputs(*args, **kwargs)

    batch.write_outputs = timed_write
    try:
        started, cpu_started = time.monotonic(), process_cpu()
        summary = batch.run_batch([folder], work / "budget.xlsx", pipeline, batch_size=batch_size)
        ended, cpu_ended = time.monotonic(), process_cpu()
    finally:
        batch.write_outputs = write_outputs
    return {"images": summary.counts.done, "scoring_s": marks["write_started"] - started,
            "scoring_cpu_s": marks["write_cpu_started"] - cpu_started, "write_s": ended - marks["write_started"],
            "write_cpu_s": cpu_ended - marks["write_cpu_started"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=400, help="images (re-encoded sample fields unless --images)")
    parser.add_argument("--images", type=Path, help="the first --count of this folder's images instead")
    parser.add_argument("--models", type=Path, default=REPO / "models")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--no-cells", action="store_true", help="score without looking for white cells")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args()

    from bench import speed_images

    from allscan.models.ensemble import Ensemble
    from allscan.scoring.pipeline import Pipeline, as_pipeline

    ensemble = Ensemble.load(args.models)
    pipeline = Pipeline(ensemble) if args.no_cells else as_pipeline(ensemble)
    with tempfile.TemporaryDirectory(prefix="allscan-budget-") as tmp:
        work = Path(tmp)
        folder = work / "images"
        paths = speed_images(args.images, args.count, folder)
        steps, prepared = prepare_budget(paths, pipeline.maker)
        fieldsets = [p.fields for p in prepared if p.fields is not None]
        models = models_budget(pipeline, fieldsets, args.batch_size)
        run = run_budget(folder, pipeline, args.batch_size, work)

    n = run["images"]
    per_image = {f"prepare: {name}": seconds * 1000 / n for name, seconds in steps.items() if name != "prepare"}
    per_image["prepare: the rest"] = (steps["prepare"] - sum(v for k, v in steps.items() if k != "prepare")) * 1000 / n
    per_image.update({("cell classifier" if name == "cells" else f"model: {name}"): seconds * 1000 / n
                      for name, seconds in models.items()})
    measured = sum(per_image.values())
    scoring_cpu = run["scoring_cpu_s"] * 1000 / n
    per_image["beyond these in the run (threads, store, results)"] = scoring_cpu - measured
    figures = {
        "images": n,
        "runtime": ensemble.runtime,
        "cells": pipeline.cells is not None,
        "cpu_ms_per_image": per_image,
        "run_cpu_ms_per_image_while_scoring": scoring_cpu,
        "cores_busy_while_scoring": run["scoring_cpu_s"] / run["scoring_s"],
        "write_ms_per_image": run["write_s"] * 1000 / n,
        "write_cores_busy": run["write_cpu_s"] / run["write_s"],
        "end_to_end_img_s": n / (run["scoring_s"] + run["write_s"]),
        "machine_cpus": os.cpu_count(),
    }
    if args.json:
        print(json.dumps(figures))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"CPU per image: {n} images, {ensemble.runtime}, cells {'on' if figures['cells'] else 'off'}")
    table.add_column("part")
    table.add_column("ms of CPU an image", justify="right")
    table.add_column("share of the run's", justify="right")
    for part, ms in per_image.items():
        table.add_row(part, f"{ms:.2f}", f"{100 * ms / scoring_cpu:.1f}%")
    table.add_row("the run while scoring", f"{scoring_cpu:.2f}",
                  f"{figures['cores_busy_while_scoring']:.2f} of {os.cpu_count()} cores busy")
    table.add_row("writing the output file after the last batch (wall)", f"{figures['write_ms_per_image']:.2f}",
                  f"{figures['write_cores_busy']:.2f} cores busy")
    table.add_row("end to end", f"{figures['end_to_end_img_s']:.1f} img/s", "")
    Console().print(table)


if __name__ == "__main__":
    main()

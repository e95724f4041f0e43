"""Measure allscan's speed and memory on this machine, on the same images and models.

Prints a table (or, with --json, one JSON object) of: the naive baseline (``model.predict``
image by image), model compute alone (in-memory tensors, compiled batched forward), end to
end (``allscan predict`` with decoding, the store and the Excel write), their ratios, peak
RSS of end-to-end runs at 100 and 2,000 images, time to the first result and model load time.
``--runtime both`` (the default) measures compute only and end to end with the Keras and the
OpenVINO runtime in the same run and prints them side by side; ``keras`` or ``openvino`` measures one.
End to end runs ``--pairs`` times with and without cells, back to back; rates and what the cells add are
medians. ``--baseline REV`` also runs end to end, ``--pairs`` times on the same images, the code and
models of git commit REV (e.g. the commit an issue measured) from a copy of that commit, and prints the
default runtime's rates against it.

With ``--engine ray`` it measures instead the local engine beside the Ray engine on a local
runtime with 1 and 2 scoring actors sharing this machine's CPUs: throughput once results
flow, time to the first result (runtime start, actors loading the models) and each
actor's peak memory.

Usage:
    python benchmarks/bench.py [--count 200] [--images DIR] [--models DIR] [--batch-size 16]
                               [--runtime keras|openvino|both] [--pairs 3] [--baseline REV] [--json]
    python benchmarks/bench.py --engine ray [--count 200] [--json]
"""

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def make_images(source: Path, count: int, folder: Path) -> list[Path]:
    """``count`` JPEGs re-encoded from ``source`` with one pixel changed so every sha256 differs."""
    import numpy as np
    from PIL import Image

    from allscan.images import decode_file, find_images

    sources = [decode_file(p).rgb for p in find_images([source])]
    if not sources:
        raise SystemExit(f"no images in {source}")
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        rgb = sources[i % len(sources)].copy()
        rgb[0, 0] = (i % 256, (i // 256) % 256, 7)
        path = folder / f"img{i:05d}.jpg"
        Image.fromarray(np.asarray(rgb)).save(path, quality=95)
        paths.append(path)
    return paths


def speed_images(source: Path | None, count: int, folder: Path) -> list[Path]:
    """The images every figure is measured on, in ``folder``: links to the first ``count`` of ``source``'s
    images (as ``allscan predict`` finds them), or ``count`` re-encoded sample fields when ``source`` is
    None. A run over ``folder`` then scores exactly the images the other figures measured."""
    if source is None:
        return make_images(REPO / "sample_images", count, folder)
    from allscan.images import find_images

    folder.mkdir(parents=True, exist_ok=True)
    links = []
    for i, path in enumerate(find_images([source])[:count]):
        link = folder / f"img{i:05d}{path.suffix}"
        link.symlink_to(path.resolve())
        links.append(link)
    if not links:
        raise SystemExit(f"no images in {source}")
    return links


def actor_peaks_mb() -> list[float]:
    """Peak RSS (VmHWM) of each live Ray scoring actor on this machine."""
    peaks = []
    for proc in Path("/proc").iterdir():
        try:
            if b"_ScoreBatch" not in (proc / "cmdline").read_bytes():
                continue
            status = (proc / "status").read_text()
        except OSError:
            continue
        peaks += [int(line.split()[1]) / 1024 for line in status.splitlines() if line.startswith("VmHWM:")]
    return sorted(peaks)


def own_peak_kb() -> float:
    """This process's peak resident memory since it started, in kB.

    Linux's ``ru_maxrss`` survives fork and exec, so a child of a parent that had loaded TensorFlow would
    report the parent's peak; ``VmHWM`` is the process's own.
    """
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return float(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:")))


def child(images: Path, out: Path, models: Path, batch_size: int, engine: str = "local",
          runtime: str = "auto", cells: str = "on") -> None:
    """One end-to-end run in a fresh process: prints timings, cells found and peak RSS as JSON.

    ``engine`` is ``local`` or ``ray:ACTORS:CPUS`` (a local Ray runtime of CPUS CPUs); ``runtime``
    the models' runtime (``auto``, ``keras`` or ``openvino``); ``cells`` ``on`` (the cell classifier
    beside the models, as ``allscan predict`` runs by default) or ``off`` (``--no-cells``).
    """
    started = time.monotonic()
    from allscan.models.ensemble import Ensemble
    from allscan.run.batch import run_batch
    from allscan.scoring.pipeline import Pipeline, as_pipeline

    load_started = time.monotonic()
    ensemble = Ensemble.load(models, runtime=runtime)
    pipeline = as_pipeline(ensemble) if cells == "on" else Pipeline(ensemble)
    load_s = time.monotonic() - load_started
    runner = None
    if engine.startswith("ray:"):
        from allscan.run.engines.ray import PREPARE_CPUS, RayEngine

        actors, cpus = (int(v) for v in engine.split(":")[1:])
        runner = RayEngine(actors=actors, actor_cpus=(cpus - PREPARE_CPUS) / actors, num_cpus=cpus)

    class Timing:
        first = last = None
        count = cells = 0
        actor_peaks: list[float] = []

        def start(self, total):
            self.total = total

        def result(self, result, skipped):
            self.count += 1
            self.cells += result.score.cells.count if result.score and result.score.cells else 0
            self.last = time.monotonic()
            if self.first is None:
                self.first = self.last
            if self.count == self.total and runner is not None:
                self.actor_peaks = actor_peaks_mb()  # while the runtime is still up

    observer = Timing()
    run_started = time.monotonic()
    summary = run_batch([images], out, pipeline, batch_size=batch_size, observer=observer, engine=runner)
    run_s = time.monotonic() - run_started
    peak_kb = own_peak_kb()
    flowing = (observer.count - 1) / (observer.last - observer.first) if observer.count > 1 else None
    print(json.dumps({"n": summary.counts.done, "errors": summary.counts.errors, "seconds": run_s,
                      "load_s": load_s, "first_result_s": observer.first - started,
                      "first_result_after_load_s": observer.first - run_started, "flowing_img_s": flowing,
                      "peak_rss_mb": peak_kb / 1024, "actor_peak_rss_mb": observer.actor_peaks,
                      "cells": observer.cells}))


def end_to_end(images: Path, models: Path, batch_size: int, workdir: Path, engine: str = "local",
               runtime: str = "auto", cells: str = "on") -> dict:
    out = fresh_output(workdir, f"e2e-{images.name}.xlsx")
    return run_child(REPO, [str(images), str(out), str(models), str(batch_size), engine, runtime, cells], engine)


def baseline_run(tree: Path, images: Path, batch_size: int, workdir: Path) -> dict:
    """One end-to-end run of the code and models in ``tree`` (a copy of an earlier commit), by that commit's
    own ``bench.py --child``: before the runtime and cells options its child took five arguments, since
    then seven (the default runtime, cells on)."""
    out = fresh_output(workdir, f"baseline-{images.name}.xlsx")
    args = [str(images), str(out), str(tree / "models"), str(batch_size), "local"]
    if "nargs=7" in (tree / "benchmarks" / "bench.py").read_text():
        args += ["auto", "on"]
    return run_child(tree, args, "baseline", cwd=tree)


def fresh_output(workdir: Path, name: str) -> Path:
    """``workdir / name`` with no earlier run's output file or results store left beside it."""
    for stale in workdir.glob(f"{name}*"):
        stale.unlink()
    return workdir / name


def run_child(tree: Path, args: list[str], what: str, cwd: Path | None = None) -> dict:
    """The JSON that ``tree``'s ``bench.py --child ARGS`` prints, run in a fresh process on ``tree``'s code."""
    done = subprocess.run([sys.executable, str(tree / "benchmarks" / "bench.py"), "--child", *args],
                          capture_output=True, text=True, cwd=cwd, env={**os.environ, "PYTHONPATH": str(tree)})
    if done.returncode != 0:
        raise SystemExit(f"{what} run failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def checkout(rev: str, folder: Path) -> Path:
    """A copy of commit ``rev``'s tree (code and models) in ``folder``, by ``git archive``."""
    folder.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", rev], capture_output=True)
    if archive.returncode != 0:
        raise SystemExit(f"git archive {rev} failed: {archive.stderr.decode(errors='replace').strip()}")
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive.stdout, check=True)
    return folder


def naive(paths: list[Path], models: Path) -> float:
    """Images/s of notebook-style scoring: decode, then model.predict on a one-image batch, per model."""
    import numpy as np

    from allscan._tf import keras
    from allscan.images import decode_file, resize
    from allscan.models.manifest import load_manifest
    from allscan.models.preprocessing import get_preprocessor

    manifest = load_manifest(models)
    loaded = [(keras.models.load_model(models / e.file, compile=False), e.input_size,
               get_preprocessor(e.preprocessing)) for e in manifest.models.values()]
    for model, size, pre in loaded:  # warm-up, as a notebook would have run a cell before
        model.predict(pre(np.zeros((1, size, size, 3), np.float32)), verbose=0)
    started = time.monotonic()
    for path in paths:
        rgb = decode_file(path).rgb
        for model, size, pre in loaded:
            model.predict(pre(resize(rgb, size)[None].astype(np.float32)), verbose=0)
    return len(paths) / (time.monotonic() - started)


def compute_only(paths: list[Path], models: Path, batch_size: int, runtime: str = "auto") -> dict:
    """Images/s of each model's forward pass in ``runtime`` on tensors already decoded and resized in memory."""
    import numpy as np

    from allscan.models.ensemble import Ensemble
    from allscan.images import decode_file, resize

    ensemble = Ensemble.load(models, runtime=runtime)
    decoded = [decode_file(p).rgb for p in paths]
    per_model, total = {}, 0.0
    for member in ensemble.members:
        x = np.stack([resize(rgb, member.input_size) for rgb in decoded])
        member.outputs(x[:batch_size])
        started = time.monotonic()
        for i in range(0, len(x), batch_size):
            member.outputs(x[i : i + batch_size])  # (p(ALL), pooled features)
        seconds = time.monotonic() - started
        per_model[member.name] = len(x) / seconds
        total += seconds
    return {"per_model": per_model, "all": len(paths) / total,
            "member_runtimes": {m.name: m.runtime for m in ensemble.members}}


def at_least_one(text: str) -> int:
    """An argparse type: a whole number of at least 1 (a count of 0 left a rate to divide by zero)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=at_least_one, default=200, help="images for the speed figures")
    parser.add_argument("--images", type=Path,
                        help="the first --count of this folder's images instead of re-encoded samples")
    parser.add_argument("--models", type=Path, default=REPO / "models")
    parser.add_argument("--batch-size", type=at_least_one, default=16)
    parser.add_argument("--naive-count", type=at_least_one, default=40, help="images for the (slow) naive baseline")
    parser.add_argument("--rss-counts", default="100,2000", help="image counts for the peak-RSS runs")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument("--engine", choices=("local", "ray"), default="local",
                        help="ray: compare the local engine with the Ray engine at 1 and 2 actors")
    parser.add_argument("--ray-cpus", type=int, default=os.cpu_count(), help="CPUs of the local Ray runtime")
    parser.add_argument("--runtime", choices=("keras", "openvino", "both"), default="both",
                        help="the models' runtime to measure; both: Keras and OpenVINO in the same run")
    parser.add_argument("--pairs", type=at_least_one, default=3,
                        help="end-to-end runs with and without cells, alternated; the figures are their medians")
    parser.add_argument("--baseline", metavar="REV",
                        help="also measure end to end the code and models of this git commit, as often as --pairs")
    parser.add_argument("--child", nargs=7, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        images, out, models, batch, engine, runtime, cells = args.child
        child(Path(images), Path(out), Path(models), int(batch), engine, runtime, cells)
        return
    if args.engine == "ray":
        engines_benchmark(args)
        return

    with tempfile.TemporaryDirectory(prefix="allscan-bench-") as tmp:
        work = Path(tmp)
        speed_dir = work / "speed"
        paths = speed_images(args.images, args.count, speed_dir)
        rss_counts = [int(n) for n in args.rss_counts.split(",")]
        rss_dirs = {}
        for n in rss_counts:
            rss_dirs[n] = work / f"rss{n}"
            make_images(REPO / "sample_images", n, rss_dirs[n])

        runtimes = ("keras", "openvino") if args.runtime == "both" else (args.runtime,)
        measured, pairs = {}, {}
        for runtime in runtimes:
            # With and without cells alternated, back to back: single runs minutes apart scattered by
            # ±7 points in what the cells add (38-52% on one day).
            pairs[runtime] = [tuple(end_to_end(speed_dir, args.models, args.batch_size, work, runtime=runtime,
                                               cells=cells) for cells in ("on", "off"))
                              for _ in range(max(1, args.pairs))]
            rss = {n: end_to_end(rss_dirs[n], args.models, args.batch_size, work, runtime=runtime)
                   for n in rss_counts}
            e2e = _median_run([on for on, _ in pairs[runtime]])
            measured[runtime] = (e2e, rss, compute_only(paths, args.models, args.batch_size, runtime))
        without_cells = {runtime: _median_run([off for _, off in pairs[runtime]]) for runtime in runtimes}
        baseline = None
        if args.baseline:
            tree = checkout(args.baseline, work / "baseline")
            baseline = [baseline_run(tree, speed_dir, args.batch_size, work) for _ in range(max(1, args.pairs))]
        naive_rate = naive(paths[: args.naive_count], args.models)

    figures = {
        "naive_img_s": naive_rate,
        "runtimes": {runtime: runtime_figures(e2e, rss, compute, naive_rate)
                     for runtime, (e2e, rss, compute) in measured.items()},
        "cells": {runtime: cell_figures(pairs[runtime], runtime) for runtime in runtimes},
        **({"speedup_vs_keras": _rate(measured["openvino"][0]) / _rate(measured["keras"][0]),
            "speedup_vs_keras_without_cells": _rate(without_cells["openvino"]) / _rate(without_cells["keras"])}
           if len(measured) == 2 else {}),
        **({"baseline": baseline_figures(args.baseline, baseline, measured[runtimes[-1]][0],
                                         without_cells[runtimes[-1]])} if baseline else {}),
        "images": len(paths),
        "pairs": max(1, args.pairs),
        "batch_size": args.batch_size,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.python_implementation()}"
                   f" {platform.python_version()}",
    }
    if args.json:
        print(json.dumps(figures))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"allscan benchmark: {len(paths)} images, batch {args.batch_size}, {figures['machine']}")
    table.add_column("figure")
    for runtime in runtimes:
        table.add_column(runtime, justify="right")
    table.add_column("target", justify="right")
    rows = [(runtime, figures["runtimes"][runtime]) for runtime in runtimes]

    def row(label: str, show, target: str = "") -> None:
        table.add_row(label, *(show(f) for _, f in rows), target)

    table.add_row("naive baseline (model.predict per image, Keras)", *[f"{naive_rate:.2f} img/s"] * len(rows), "")
    for name in figures["runtimes"][runtimes[0]]["compute_img_s_per_model"]:
        row(f"compute only: {name}",
            lambda f, name=name: f"{f['compute_img_s_per_model'][name]:.1f} img/s ({f['member_runtimes'][name]})")
    row("compute only: all four", lambda f: f"{f['compute_img_s']:.2f} img/s")
    row("end to end (allscan predict → xlsx)", lambda f: f"{f['end_to_end_img_s']:.2f} img/s")
    row("speed-up vs naive", lambda f: f"{f['speedup_vs_naive']:.2f}×", "≥ 4×")
    row("end to end / compute only", lambda f: f"{100 * f['efficiency_vs_compute']:.1f}%", "≥ 85%")
    if "speedup_vs_keras" in figures:
        table.add_row("end to end: OpenVINO / Keras, with / without cells", "",
                      f"{figures['speedup_vs_keras']:.2f}× / {figures['speedup_vs_keras_without_cells']:.2f}×", "≥ 3×")
    if "baseline" in figures:
        old = figures["baseline"]
        table.add_row(f"end to end at {old['rev']} (median of {len(old['runs_img_s'])}); {runtimes[-1]} here:"
                      " with / without cells", *[""] * (len(rows) - 1),
                      f"{old['end_to_end_img_s']:.2f} img/s: {old['speedup']:.2f}× / "
                      f"{old['speedup_without_cells']:.2f}×", "≥ 3×")
    for n in rss_counts:
        row(f"peak RSS, {n} images", lambda f, n=n: f"{f[f'peak_rss_mb_{n}']:.0f} MB", "≤ 1500 MB")
    if len(rss_counts) == 2:
        a, b = rss_counts
        row(f"RSS growth {a} → {b} images",
            lambda f: f"{100 * (f[f'peak_rss_mb_{b}'] / f[f'peak_rss_mb_{a}'] - 1):.1f}%", "≤ 10%")
    row("start to first result", lambda f: f"{f['first_result_s']:.1f} s", "≤ 8 s")
    row("load four models", lambda f: f"{f['models_load_s']:.1f} s")
    cells = [figures["cells"][runtime] for runtime in runtimes]
    if cells[0]["cells_found"]:
        table.add_row("cells: end to end without / with cells",
                      *[f"{c['without_cells_img_s']:.2f} / {c['with_cells_img_s']:.2f} img/s" for c in cells], "")
        per_pair = [", ".join(f"{100 * a:.0f}" for a in c["added_time_per_pair"]) for c in cells]
        table.add_row(f"cells: added end-to-end time (median of {figures['pairs']} pairs)",
                      *[f"{100 * c['added_time']:.1f}% ({pairs})" for c, pairs in zip(cells, per_pair)], "≤ 40%")
        table.add_row("cells: found and judged per second", *[f"{c['cells_per_s']:.0f} cells/s" for c in cells], "")
    Console().print(table)


def _rate(run: dict) -> float:
    return run["n"] / run["seconds"]


def _median_run(runs: list[dict]) -> dict:
    """The run with the median rate (the lower middle one of an even count)."""
    return sorted(runs, key=_rate)[(len(runs) - 1) // 2]


def cell_figures(pairs: list[tuple[dict, dict]], runtime: str) -> dict:
    """What finding and judging the cells adds to a run's time (the median over pairs of runs with and
    without cells, each pair back to back), the median rates, and cells per second."""
    with_cells = _median_run([on for on, _ in pairs])
    added = sorted(_rate(off) / _rate(on) - 1 for on, off in pairs)
    return {"runtime": runtime, "cells_found": with_cells["cells"], "with_cells_img_s": _rate(with_cells),
            "without_cells_img_s": _rate(_median_run([off for _, off in pairs])),
            "added_time": statistics.median(added), "added_time_per_pair": added,
            "cells_per_s": with_cells["cells"] / with_cells["seconds"]}


def baseline_figures(rev: str, runs: list[dict], with_cells: dict, without_cells: dict) -> dict:
    """The earlier commit's median end-to-end rate and this code's (default runtime) against it."""
    old = _median_run(runs)
    return {"rev": rev, "end_to_end_img_s": _rate(old), "runs_img_s": [_rate(run) for run in runs],
            "first_result_s": old["first_result_s"], "speedup": _rate(with_cells) / _rate(old),
            "speedup_without_cells": _rate(without_cells) / _rate(old)}


def runtime_figures(e2e: dict, rss: dict[int, dict], compute: dict, naive_rate: float) -> dict:
    """One runtime's figures: compute only, end to end, their ratios, peak RSS, start-up times."""
    e2e_rate = _rate(e2e)
    return {
        "compute_img_s": compute["all"],
        "end_to_end_img_s": e2e_rate,
        "speedup_vs_naive": e2e_rate / naive_rate,
        "efficiency_vs_compute": e2e_rate / compute["all"],
        "first_result_s": e2e["first_result_s"],
        "models_load_s": e2e["load_s"],
        "compute_img_s_per_model": compute["per_model"],
        "member_runtimes": compute["member_runtimes"],
        **{f"peak_rss_mb_{n}": run["peak_rss_mb"] for n, run in rss.items()},
    }


def engines_benchmark(args) -> None:
    """The local engine beside the Ray engine with 1 and 2 actors, on the same images and models."""
    with tempfile.TemporaryDirectory(prefix="allscan-bench-") as tmp:
        work = Path(tmp)
        make_images(REPO / "sample_images", args.count, work / "speed")
        runs = {"local": end_to_end(work / "speed", args.models, args.batch_size, work)}
        for actors in (1, 2):
            spec = f"ray:{actors}:{args.ray_cpus}"
            runs[f"ray, {actors} actor{'s' if actors > 1 else ''}"] = end_to_end(
                work / "speed", args.models, args.batch_size, work, spec)
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    figures = {"images": args.count, "batch_size": args.batch_size, "ray_cpus": args.ray_cpus, "machine": machine,
               "runs": {name: {**run, "end_to_end_img_s": run["n"] / run["seconds"]} for name, run in runs.items()}}
    if args.json:
        print(json.dumps(figures))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"allscan engines: {args.count} images, batch {args.batch_size}, {machine},"
                        f" Ray runtime of {args.ray_cpus} CPUs")
    for column in ("engine", "img/s once flowing", "img/s end to end", "first result", "peak RSS driver",
                   "peak RSS per actor"):
        table.add_column(column, justify="left" if column == "engine" else "right")
    for name, run in figures["runs"].items():
        actors = ", ".join(f"{mb:.0f}" for mb in run["actor_peak_rss_mb"]) or "–"
        table.add_row(name, f"{run['flowing_img_s']:.1f}", f"{run['end_to_end_img_s']:.1f}",
                      f"{run['first_result_after_load_s']:.1f} s", f"{run['peak_rss_mb']:.0f} MB",
                      f"{actors} MB" if run["actor_peak_rss_mb"] else actors)
    Console().print(table)


if __name__ == "__main__":
    main()

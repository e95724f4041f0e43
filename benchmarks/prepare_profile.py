"""Time the per-image CPU step (:func:`allscan.run.job.prepare`) and check that a change left its outputs alone.

Prints the median ms per image of ``prepare`` over a single-threaded loop (``--loops`` times), then a
profile of its steps (cumulative ms per image), and with ``--save`` or ``--compare`` runs every image
given once and pickles, or compares against a pickle, what ``prepare`` made of each: the red-cell size,
scale, colour statistics, fields (boxes and the model inputs' bytes), notes, and the white cells
(centroids, boxes, nucleus areas, crops' bytes).

    python benchmarks/prepare_profile.py --timed ~/data/aria/test --save /tmp/before.pkl \
        ~/data/aria/val ~/data/aria/test ~/data/foreign/bccd
    python benchmarks/prepare_profile.py --timed ~/data/aria/test --compare /tmp/before.pkl \
        ~/data/aria/val ~/data/aria/test ~/data/foreign/bccd

A comparison allows colour statistics ``--colour-tol`` apart and relative ``--size-tol`` on red-cell
sizes; all else must be equal. The models folder's domain reference and input sizes are used; no model
is loaded.
"""

import argparse
import cProfile
import hashlib
import json
import pickle
import pstats
import sys
import time
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

STEPS = ("prepare", "decode_bytes", "analysis_copy", "colour_stats", "rgb_to_lab", "estimate_diameter",
         "cell_mask", "flatten_background", "pattern_spectrum", "rescale", "resize", "cell_crops",
         "find_cells", "nucleus_signal", "_cells", "_domes", "_describe", "crop_cells", "normalise_colour")
"""The functions whose cumulative time the profile shows, by name."""


def field_maker(models: Path):
    """A :class:`~allscan.domain.fields.FieldMaker` with the models folder's domain reference and
    input sizes, finding cells."""
    from allscan.domain.fields import DomainOptions, FieldMaker
    from allscan.domain.reference import DomainReference

    manifest = json.loads((models / "manifest.json").read_text())
    reference = DomainReference.load(models / manifest["domain"]["file"], manifest["domain"]["sha256"])
    sizes = tuple(sorted({entry["input_size"] for entry in manifest["models"].values()}))
    return FieldMaker(reference, sizes, DomainOptions(), cells=True)


def images(folders: list[Path], count: int | None = None) -> list[Path]:
    """The images under ``folders`` as ``allscan predict`` finds them; ``count`` of them evenly spread, if given."""
    from allscan.images import find_images

    paths = find_images([Path(f).expanduser() for f in folders])
    if count is not None and len(paths) > count:
        paths = [paths[i] for i in np.linspace(0, len(paths) - 1, count).astype(int)]
    return paths


def outputs(prepared) -> dict:
    """What ``prepare`` made of one image, in plain values."""
    fields = prepared.fields
    if fields is None:
        return {"error": prepared.error}
    cells = fields.cells
    return {
        "diameter": fields.diameter, "scale": fields.scale, "colour": np.asarray(fields.colour, np.float64),
        "boxes": [(b.x, b.y) for b in fields.boxes], "shape": fields.shape, "content": fields.content,
        "inputs": {s: hashlib.sha256(a.tobytes()).hexdigest() for s, a in sorted(fields.inputs.items())},
        "stain_normalised": fields.stain_normalised, "background_only": fields.background_only,
        "notes": fields.notes,
        "cells": None if cells is None else [(c.x, c.y, c.x0, c.y0, c.x1, c.y1, c.nucleus_px) for c in cells.cells],
        "crops": None if cells is None else hashlib.sha256(cells.crops.tobytes()).hexdigest(),
    }


def differences(before: dict, after: dict, colour_tol: float, size_tol: float) -> list[str]:
    """How one image's outputs differ beyond the tolerances (empty when they agree)."""
    if before.keys() != after.keys():
        return [f"outputs {sorted(before)} became {sorted(after)}"]
    found = []
    for key, old in before.items():
        new = after[key]
        if key == "colour":
            gap = float(np.max(np.abs(old - new)))
            if gap > colour_tol:
                found.append(f"colour differs by {gap:.2e}")
        elif key in ("diameter", "scale") and old is not None and new is not None:
            if abs(new - old) > size_tol * abs(old):
                found.append(f"{key} {old!r} became {new!r}")
        elif old != new:
            found.append(f"{key} differs")
    return found


def timed(paths: list[Path], maker, loops: int) -> tuple[float, float]:
    """Medians over ``loops`` of the wall-clock and the CPU ms per image of ``prepare`` over ``paths``."""
    from allscan.run.job import prepare

    wall, cpu = [], []
    for _ in range(loops):
        start, start_cpu = time.perf_counter(), time.process_time()
        for path in paths:
            prepare(path, maker)
        wall.append((time.perf_counter() - start) * 1000 / len(paths))
        cpu.append((time.process_time() - start_cpu) * 1000 / len(paths))
    return float(np.median(wall)), float(np.median(cpu))


def profiled(paths: list[Path], maker) -> dict[str, float]:
    """Cumulative ms per image of each of :data:`STEPS`, under cProfile."""
    from allscan.run.job import prepare

    profile = cProfile.Profile()
    profile.enable()
    for path in paths:
        prepare(path, maker)
    profile.disable()
    totals = dict.fromkeys(STEPS, 0.0)
    for (filename, _, name), (_, _, _, cumulative, _) in pstats.Stats(profile).stats.items():
        if name in totals and "allscan" in filename:
            totals[name] += cumulative * 1000 / len(paths)
    return totals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="*", type=Path, help="images whose outputs are saved or compared")
    parser.add_argument("--timed", type=Path, help="folder of images to time (Aria fields: one field each)")
    parser.add_argument("--count", type=int, default=200, help="images timed, evenly spread over --timed")
    parser.add_argument("--loops", type=int, default=3)
    parser.add_argument("--models", type=Path, default=REPO / "models")
    parser.add_argument("--save", type=Path)
    parser.add_argument("--compare", type=Path)
    parser.add_argument("--colour-tol", type=float, default=1e-4)
    parser.add_argument("--size-tol", type=float, default=1e-9)
    args = parser.parse_args()
    maker = field_maker(args.models)
    if args.timed:
        # One core's cost: the decode threads already prepare several images at once.
        cv2.setNumThreads(1)
        sample = images([args.timed], args.count)
        timed(sample[:10], maker, 1)  # warm up imports and caches
        wall, cpu = timed(sample, maker, args.loops)
        print(f"prepare: {wall:.2f} ms per image, {cpu:.2f} ms of CPU (medians of {args.loops} loops over "
              f"{len(sample)} images)")
        for step, ms in profiled(sample, maker).items():
            print(f"  {step:20s} {ms:7.2f} ms")
    if not (args.save or args.compare):
        return
    from allscan.run.job import prepare

    made = {str(p): outputs(prepare(p, maker)) for p in images(args.folders)}
    if args.save:
        args.save.write_bytes(pickle.dumps(made))
        print(f"saved the outputs of {len(made)} images to {args.save}")
    if args.compare:
        saved = pickle.loads(args.compare.read_bytes())
        differing = 0
        for path in sorted(saved.keys() | made.keys()):
            found = (differences(saved[path], made[path], args.colour_tol, args.size_tol)
                     if path in saved and path in made else ["not in both runs"])
            if found:
                differing += 1
                print(f"{path}: {'; '.join(found)}")
        colour_gap = max((float(np.max(np.abs(saved[p]["colour"] - made[p]["colour"])))
                          for p in saved.keys() & made.keys() if "colour" in saved[p] and "colour" in made[p]),
                         default=0.0)
        print(f"{len(made) - differing} of {len(made)} images identical (largest colour gap {colour_gap:.2e}); "
              f"{differing} differ")


if __name__ == "__main__":
    main()

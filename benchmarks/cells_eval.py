"""The cell classifier's figures through the product path (``allscan.predict(..., cells=True)``): on a
labelled field split (weak labels: every ALL field should hold a blast, few benign cells should be
called one; the label box blanked as in training) and on single-cell crops of normal cells from
another lab (PBC: one cell centred per image; the cell nearest the image centre is the one judged).

    python benchmarks/cells_eval.py --aria ~/data/aria --split test --pbc ~/data/cells/pbc --per-class 300

Prints one JSON object: the field figures with 95% Wilson intervals (ALL fields with at least one
blast, benign cells called blast, ROC AUC of each field's highest p(blast)); per PBC class the share
of cells called blast, how many images had no cell found near the centre, how many were flagged
out of domain, how many the field models call ALL (the same crops judged as whole images), and how
many centred cells would be a *silent* false blast (called blast in an image not flagged for review);
the worst cells (highest p(blast) among benign cells and lowest top p(blast) among ALL fields) for
inspection; and the time taken.
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

import allscan
from allscan.images import decode_file, find_images
from allscan.training.cell_evaluate import class_rates, field_figures
from allscan.training.dataset import ARIA_LABEL_BOX, blank_box, list_split


def aria_figures(root: Path, split: str, models: Path | None, workdir: Path) -> dict:
    """Field figures on ``root/split``, the label box blanked as in training (written to ``workdir``)."""
    paths, labels = list_split(root / split)
    blanked = []
    for path in paths:
        target = workdir / split / path.parent.name / f"{path.stem}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(blank_box(decode_file(path).rgb, ARIA_LABEL_BOX)).save(target)
        blanked.append(target)
    started = time.monotonic()
    results, cells = allscan.predict(blanked, models=models, cells=True)
    seconds = time.monotonic() - started
    index = {str(p): i for i, p in enumerate(blanked)}
    threshold = _threshold(models)
    field = np.array([index[p] for p in cells["path"]], dtype=int)
    p = cells["p_blast"].to_numpy(dtype=float)
    figures = field_figures(p, field, labels, threshold).to_dict()
    benign = labels[field] == 0
    worst_benign = cells[benign].nlargest(10, "p_blast")
    top = np.full(len(blanked), -1.0)
    np.maximum.at(top, field, p)
    worst_all = [(str(paths[i]), float(top[i])) for i in np.argsort(top) if labels[i] == 1][:10]
    results = results.set_index("path").loc[[str(p) for p in blanked]]
    scored = results[results["verdict"] != "error"]
    return figures | {
        "fields": len(blanked), "cells": len(cells), "seconds": round(seconds, 1),
        "flagged_by_cells": int(scored["notes"].str.contains("cells disagree", regex=False).sum()),
        "flagged_by_cells_benign": int(sum("cells disagree" in str(n) and lab == 0
                                           for n, lab in zip(results["notes"], labels))),
        "worst_benign_cells": [{"field": str(paths[index[r.path]]), "cell": int(r.cell), "p_blast": float(r.p_blast)}
                               for r in worst_benign.itertuples()],
        "lowest_all_fields": [{"field": f, "top_p_blast": t} for f, t in worst_all],
    }


def pbc_figures(root: Path, per_class: int, models: Path | None, seed: int = 0) -> dict:
    """Per-class share of PBC's centred cells called blast (``per_class`` images drawn per class)."""
    rng = np.random.default_rng(seed)
    chosen, classes = [], []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        files = find_images([folder])
        for i in sorted(rng.choice(len(files), min(per_class, len(files)), replace=False)):
            chosen.append(files[i])
            classes.append(folder.name)
    started = time.monotonic()
    results, cells = allscan.predict(chosen, models=models, cells=True)
    seconds = time.monotonic() - started
    by_path = {str(p): i for i, p in enumerate(chosen)}
    results = results.set_index("path").loc[[str(p) for p in chosen]]
    centred = np.full(len(chosen), np.nan)
    for path, group in cells.groupby("path"):
        i = by_path[path]
        width, height = results["width"].iloc[i], results["height"].iloc[i]
        distance = np.hypot(group["x"] - width / 2, group["y"] - height / 2)
        centred[i] = float(group["p_blast"].to_numpy()[int(np.argmin(distance.to_numpy()))])
    found = ~np.isnan(centred)
    classes_arr = np.array(classes)
    threshold = _threshold(models)
    out_of_domain = (results["domain"] == "out").to_numpy()
    review = results["review"].fillna(True).astype(bool).to_numpy()
    called_all = (results["verdict"] == "ALL").to_numpy()
    rates = class_rates(centred[found], classes_arr[found], threshold)
    per_class = {}
    for name in sorted(set(classes)):
        mine = classes_arr == name
        per_class[name] = {"images": int(mine.sum()), "no_cell_found": int((mine & ~found).sum()),
                           "out_of_domain": int((mine & out_of_domain).sum()),
                           "image_called_all": int((mine & called_all).sum()),
                           "silent_false_blast": int((mine & found & ~review & (np.nan_to_num(centred) >= threshold))
                                                     .sum())}
    return {"called_blast": rates, "per_class": per_class, "images": len(chosen), "seconds": round(seconds, 1),
            "median_p_blast": {n: float(np.median(centred[found & (classes_arr == n)])) for n in sorted(set(classes))}}


def _threshold(models: Path | None) -> float:
    from allscan.paths import default_models_dir
    from allscan.scoring.cells import CellClassifier

    classifier = CellClassifier.load(models or default_models_dir(), load_models=False)
    if classifier is None:
        raise SystemExit("these models have no cell classifier (models/cells)")
    return classifier.threshold


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--aria", type=Path, help="Aria data folder (split folders inside)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--pbc", type=Path, help="PBC cells folder (one folder per class)")
    parser.add_argument("--per-class", type=int, default=300)
    parser.add_argument("--models", type=Path)
    args = parser.parse_args()
    figures: dict = {}
    if args.aria:
        with tempfile.TemporaryDirectory(prefix="allscan-cells-") as tmp:
            figures["aria"] = {"split": args.split, **aria_figures(args.aria, args.split, args.models, Path(tmp))}
    if args.pbc:
        figures["pbc"] = pbc_figures(args.pbc, args.per_class, args.models)
    print(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()

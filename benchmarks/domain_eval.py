"""Measure the domain handling: the Aria test split before/after, a HED stain shift with and without
normalisation, the out-of-domain rate on other labs' images, and a simulated lab unadapted vs
adapted with 10 and 20 labelled images.

    python benchmarks/domain_eval.py ~/data/aria --foreign ~/data/foreign --work ~/allscan-runs/domain-eval

The simulated lab is built from the Aria *test* split: each mosaic stitches 2×2 fields of one
class, is enlarged ×3 (red cells ~46 px), strongly stain-shifted in HED space (haematoxylin ×1.8
+0.1, eosin ×0.5 −0.08, DAB +0.05), blurred (Gaussian σ 2 px) and re-encoded as JPEG (quality 60).
Prints figures and writes them as JSON.
"""

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from PIL import Image, ImageFilter  # noqa: E402

from allscan.training.dataset import blank_box, list_split  # noqa: E402
from allscan.training.adapt import collect, fit_heads, image_probabilities, out_of_fold  # noqa: E402
from allscan.domain.fields import DomainOptions  # noqa: E402
from allscan.scoring.pipeline import Pipeline  # noqa: E402
from allscan.scoring.vote import combine  # noqa: E402
from allscan.domain.stain import hed_shift  # noqa: E402
from allscan.models.ensemble import Ensemble  # noqa: E402
from allscan.images import decode_file, find_images, resize  # noqa: E402
from allscan.training.tune import tune_threshold  # noqa: E402

HED_SCALE, HED_SHIFT = np.array([1.35, 0.75, 1.0]), np.array([0.04, -0.03, 0.0])
LAB_HED_SCALE, LAB_HED_SHIFT = np.array([1.8, 0.5, 1.0]), np.array([0.1, -0.08, 0.05])


def metrics(labels: np.ndarray, p: np.ndarray, threshold: float) -> dict:
    from sklearn.metrics import roc_auc_score

    called = p >= threshold
    tp, tn = int((called & (labels == 1)).sum()), int((~called & (labels == 0)).sum())
    fp, fn = int((called & (labels == 0)).sum()), int((~called & (labels == 1)).sum())
    return {"n": len(labels), "accuracy": (tp + tn) / len(labels), "recall": tp / max(tp + fn, 1),
            "specificity": tn / max(tn + fp, 1), "precision": tp / max(tp + fp, 1),
            "f1": 2 * tp / max(2 * tp + fp + fn, 1), "roc_auc": float(roc_auc_score(labels, p)),
            "confusion": [[tn, fp], [fn, tp]]}


def score_rgbs(pipeline: Pipeline, rgbs: list[np.ndarray], batch: int = 32) -> list:
    scores = []
    for start in range(0, len(rgbs), batch):
        scores += pipeline.score([pipeline.fields(rgb) for rgb in rgbs[start:start + batch]])
    return scores


def summary(scores, labels, threshold) -> dict:
    p = np.array([s.p_all for s in scores])
    out = np.array([s.out_of_domain for s in scores])
    return metrics(labels, p, threshold) | {"out_of_domain": float(out.mean()),
                                            "tiles_mean": float(np.mean([s.domain.tiles for s in scores]))}


def aria(ensemble: Ensemble, data: Path) -> dict:
    paths, labels = list_split(data / "test")
    box = ensemble.manifest.blank_box
    rgbs = [blank_box(decode_file(p).rgb, box) for p in paths]
    threshold = ensemble.manifest.ensemble.threshold
    before = []
    for start in range(0, len(rgbs), 32):
        chunk = rgbs[start:start + 32]
        probs, _ = ensemble.outputs({z: np.stack([resize(r, z) for r in chunk]) for z in ensemble.input_sizes})
        before += [combine({n: float(p[i]) for n, p in probs.items()}, ensemble.manifest.ensemble).p_all
                   for i in range(len(chunk))]
    result = {"before (whole field, no domain handling)": metrics(labels, np.array(before), threshold)}
    default = Pipeline(ensemble)
    scores = score_rgbs(default, rgbs)
    result["after (domain handling on)"] = summary(scores, labels, threshold)
    result["after: scale factors applied"] = sorted({s.domain.scale for s in scores if s.domain.scale is not None})
    result["after: no scale estimate"] = int(sum(s.domain.scale is None for s in scores))
    reasons: dict[str, int] = {}
    for s in scores:
        if s.out_of_domain:
            key = s.domain.notes.split(":")[1].split("(")[0].strip()[:40]
            reasons[key] = reasons.get(key, 0) + 1
    result["after: out-of-domain reasons"] = reasons
    shifted = [hed_shift(r, HED_SCALE, HED_SHIFT) for r in rgbs]
    result["HED shift, stain norm on"] = summary(score_rgbs(default, shifted), labels, threshold)
    result["HED shift, --no-stain-norm"] = summary(
        score_rgbs(Pipeline(ensemble, DomainOptions(stain_norm=False)), shifted), labels, threshold)
    return result


def foreign(ensemble: Ensemble, root: Path) -> dict:
    pipeline = Pipeline(ensemble)
    result = {}
    for name in sorted(p.name for p in root.iterdir() if p.is_dir()):
        paths = find_images([root / name])
        if not paths:
            continue  # e.g. a folder of annotations beside the image sets
        started, pixels, scores = time.monotonic(), 0, []
        for start in range(0, len(paths), 16):
            decoded = [decode_file(p) for p in paths[start:start + 16]]
            pixels += sum(d.width * d.height for d in decoded)
            scores += pipeline.score([pipeline.fields(d.rgb) for d in decoded])
        seconds = time.monotonic() - started
        result[name] = {
            "images": len(paths),
            "out_of_domain": float(np.mean([s.out_of_domain for s in scores])),
            "called_ALL": float(np.mean([s.verdict == "ALL" for s in scores])),
            "silent_normal": float(np.mean([s.verdict == "normal" and not s.review for s in scores])),
            "scale_median": float(np.median([s.domain.scale for s in scores if s.domain.scale is not None] or [0])),
            "no_scale_estimate": int(sum(s.domain.scale is None for s in scores)),
            "tiles_mean": float(np.mean([s.domain.tiles for s in scores])),
            "seconds_per_megapixel": seconds / (pixels / 1e6),
        }
    return result


def build_lab(data: Path, folder: Path, per_class: dict[str, int], seed: int = 0) -> None:
    """Mosaics of 2×2 test fields of one class, ×3, HED-shifted, blurred, JPEG q60."""
    rng = np.random.default_rng(seed)
    paths, labels = list_split(data / "test")
    for label, name in ((0, "normal"), (1, "ALL")):
        chosen = [p for p, y in zip(paths, labels) if y == label]
        chosen = [chosen[i] for i in rng.permutation(len(chosen))]
        for m in range(min(per_class[name], len(chosen) // 4)):
            tiles = [blank_box(decode_file(p).rgb, (185, 203, 223, 222)) for p in chosen[4 * m:4 * m + 4]]
            mosaic = np.concatenate([np.concatenate(tiles[:2], 1), np.concatenate(tiles[2:], 1)], 0)
            image = Image.fromarray(hed_shift(mosaic, LAB_HED_SCALE, LAB_HED_SHIFT)).resize((1344, 1344),
                                                                                           Image.BICUBIC)
            image = image.filter(ImageFilter.GaussianBlur(2.0))
            target = folder / name / f"{name}-{m:03d}.jpg"
            target.parent.mkdir(parents=True, exist_ok=True)
            image.save(target, quality=60)


def simulated_lab(ensemble: Ensemble, data: Path, work: Path, repeats: int = 5) -> dict:
    from sklearn.metrics import roc_auc_score

    lab = work / "simlab-strong"
    if not lab.is_dir():
        build_lab(data, lab, {"normal": 18, "ALL": 40})
    pipeline = Pipeline(ensemble)
    images, _ = collect(pipeline, lab)
    labels = np.array([im.label for im in images])
    scores = pipeline.score([im.fields for im in images])
    p = np.array([s.p_all for s in scores])
    called = p >= ensemble.manifest.ensemble.threshold
    result = {"mosaics": {"ALL": int(labels.sum()), "normal": int((labels == 0).sum())},
              "unadapted": {"roc_auc": float(roc_auc_score(labels, p)),
                            "sensitivity": float(called[labels == 1].mean()),
                            "specificity": float(1 - called[labels == 0].mean()),
                            "out_of_domain": float(np.mean([s.out_of_domain for s in scores]))}}
    rng = np.random.default_rng(1)
    for per_class in (5, 10):
        runs = []
        for _ in range(repeats):
            chosen = np.concatenate([rng.choice(np.flatnonzero(labels == c), per_class, replace=False) for c in (0, 1)])
            rest = np.setdiff1d(np.arange(len(images)), chosen)
            labelled = [images[i] for i in chosen]
            threshold = tune_threshold(labels[chosen], out_of_fold(labelled))
            q = image_probabilities(fit_heads(labelled), [images[i] for i in rest])
            hit = q >= threshold
            truth = labels[rest]
            runs.append((roc_auc_score(truth, q), hit[truth == 1].mean(), 1 - hit[truth == 0].mean()))
        runs = np.array(runs)
        result[f"adapted on {2 * per_class} labelled, measured on the other {len(images) - 2 * per_class}"] = {
            "roc_auc_mean": float(runs[:, 0].mean()), "roc_auc_min": float(runs[:, 0].min()),
            "sensitivity_mean": float(runs[:, 1].mean()), "specificity_mean": float(runs[:, 2].mean()),
            "repeats": repeats}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("--foreign", type=Path)
    parser.add_argument("--models", type=Path, default=Path(__file__).resolve().parents[1] / "models")
    parser.add_argument("--work", type=Path, default=Path.home() / "allscan-runs" / "domain-eval")
    parser.add_argument("--only", choices=["aria", "foreign", "lab"], action="append")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    ensemble = Ensemble.load(args.models)
    parts = args.only or ["aria", "foreign", "lab"]
    results = {}
    if "aria" in parts:
        results["aria_test"] = aria(ensemble, args.data)
    if "foreign" in parts and args.foreign:
        results["foreign"] = foreign(ensemble, args.foreign)
    if "lab" in parts:
        results["simulated_lab"] = simulated_lab(ensemble, args.data, args.work)
    text = json.dumps(results, indent=2)
    (args.work / f"results-{'-'.join(parts)}.json").write_text(text)
    print(text)


if __name__ == "__main__":
    main()

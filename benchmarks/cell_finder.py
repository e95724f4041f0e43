"""Check the white-cell finder against hand-drawn white-cell boxes (BCCD's VOC XML, the WBC set's YOLO
labels), and count cells per training field as a sanity check.

    python benchmarks/cell_finder.py --bccd ~/data/foreign/bccd --bccd-xml ~/data/bccd_ann/BCCD/Annotations \\
        --wbc ~/data/foreign/wbc --wbc-labels ~/data/wbc_labels/WBC_Samples --aria ~/data/aria/val

A detection is right when its centroid lies inside a white-cell box that no other detection has
taken yet (a second detection in one box is a false positive). Each image's red-cell diameter is
the scale estimate, as the domain step makes it; an image without one takes the median of its set's
estimates (what a lab would pass as its known red-cell size). Figures are also given with that
median for every image, which separates the finder's errors from the estimator's. The WBC set's
labels pair with its images by file name; a few label files carry other names and their images are
left out. Prints one JSON object.
"""

import argparse
import json
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from allscan.domain.cells import Cell, find_cells
from allscan.domain.scale import analysis_copy, estimate_diameter
from allscan.images import decode_file
from allscan.training.operating_point import wilson_interval

Box = tuple[float, float, float, float]


def bccd_boxes(xml_path: Path) -> list[Box]:
    """The white-cell boxes of one BCCD annotation file."""
    root = ET.parse(xml_path).getroot()
    return [tuple(float(obj.findtext(f"bndbox/{k}")) for k in ("xmin", "ymin", "xmax", "ymax"))
            for obj in root.iter("object") if obj.findtext("name") == "WBC"]


def yolo_boxes(label_path: Path, width: int, height: int) -> list[Box]:
    """The boxes of one YOLO label file (class, centre x, centre y, width, height; as fractions)."""
    boxes = []
    for line in label_path.read_text().splitlines():
        if line.strip():
            _, x, y, w, h = map(float, line.split())
            boxes.append(((x - w / 2) * width, (y - h / 2) * height, (x + w / 2) * width, (y + h / 2) * height))
    return boxes


def match(cells: list[Cell], boxes: list[Box]) -> tuple[int, int]:
    """Boxes found and false detections: each detection takes the first untaken box around its centroid."""
    taken = [False] * len(boxes)
    false = 0
    for cell in cells:
        free = [i for i, (x0, y0, x1, y1) in enumerate(boxes)
                if not taken[i] and x0 <= cell.x <= x1 and y0 <= cell.y <= y1]
        if free:
            taken[free[0]] = True
        else:
            false += 1
    return sum(taken), false


def pairs(args) -> dict[str, list[tuple[Path, Path]]]:
    """Per set, its (image, annotation) pairs."""
    bccd = [(image, args.bccd_xml / f"{image.stem}.xml") for image in sorted(args.bccd.glob("*.jpg"))]
    labels = {path.stem: path for path in args.wbc_labels.glob("*/labels/*.txt")}
    wbc = [(image, labels[image.stem]) for image in sorted(args.wbc.glob("*.jpg")) if image.stem in labels]
    return {"bccd": [p for p in bccd if p[1].is_file()], "wbc": wbc}


def measure(name: str, items: list[tuple[Path, Path]]) -> dict:
    """Recall and precision on one set, with the images' own scale estimates and with the set's median."""
    images, diameters = [], []
    for image_path, label_path in items:
        rgb = decode_file(image_path).rgb
        height, width = rgb.shape[:2]
        boxes = bccd_boxes(label_path) if name == "bccd" else yolo_boxes(label_path, width, height)
        images.append((rgb, boxes))
        diameters.append(estimate_diameter(rgb, analysis_copy(rgb)).diameter)
    median = float(np.median([d for d in diameters if d is not None]))
    missing = sum(d is None for d in diameters)
    own = _score(images, [median if d is None else d for d in diameters])
    fixed = _score(images, [median] * len(images))
    return {"images": len(images), "boxes": sum(len(b) for _, b in images), "no_estimate": missing,
            "no_estimate_used": f"the set's median estimate, {median:.1f} px",
            "estimated": own, "set_median_diameter": fixed}


def _score(images: list[tuple[np.ndarray, list[Box]]], diameters: list[float]) -> dict:
    found = false = detections = 0
    seconds = 0.0
    for (rgb, boxes), diameter in zip(images, diameters):
        started = time.perf_counter()
        cells = find_cells(rgb, diameter)
        seconds += time.perf_counter() - started
        hits, wrong = match(cells, boxes)
        found, false, detections = found + hits, false + wrong, detections + len(cells)
    boxes = sum(len(b) for _, b in images)
    megapixels = sum(rgb.shape[0] * rgb.shape[1] for rgb, _ in images) / 1e6
    return {"recall": found / max(boxes, 1), "recall_95": wilson_interval(found, boxes),
            "precision": (detections - false) / max(detections, 1),
            "precision_95": wilson_interval(detections - false, detections),
            "found": found, "detections": detections, "false": false,
            "ms_per_image": 1000 * seconds / len(images), "ms_per_megapixel": 1000 * seconds / megapixels}


def aria_counts(root: Path) -> dict:
    """Mean cells found per training field, by class folder, and the time per field."""
    out = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        counts, seconds = [], 0.0
        for path in sorted(folder.glob("*.jpg")):
            rgb = decode_file(path).rgb
            diameter = estimate_diameter(rgb, analysis_copy(rgb)).diameter
            if diameter is None:
                continue
            started = time.perf_counter()
            counts.append(len(find_cells(rgb, diameter)))
            seconds += time.perf_counter() - started
        out[folder.name] = {"fields": len(counts), "mean_cells": float(np.mean(counts)),
                            "no_cells": int(sum(c == 0 for c in counts)), "ms_per_field": 1000 * seconds / len(counts)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bccd", type=Path, required=True)
    parser.add_argument("--bccd-xml", type=Path, required=True)
    parser.add_argument("--wbc", type=Path, required=True)
    parser.add_argument("--wbc-labels", type=Path, required=True, help="the WBC set's WBC_Samples folder")
    parser.add_argument("--aria", type=Path, help="a split of the training set, with one folder per class")
    args = parser.parse_args()
    result = {name: measure(name, items) for name, items in pairs(args).items()}
    result["wbc"]["unlabelled_images_left_out"] = len(list(args.wbc.glob("*.jpg"))) - result["wbc"]["images"]
    if args.aria:
        result["aria_cells_per_field"] = aria_counts(args.aria)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

"""Check the red-cell size estimator against hand-drawn red-cell boxes (BCCD's VOC annotations).

    python benchmarks/scale_check.py ~/data/foreign/bccd ~/data/bccd-annotations

The annotations are `BCCD/Annotations/*.xml` of github:Shenggan/BCCD_Dataset (MIT). Per image the
reference diameter is the median over its red-cell boxes of (width + height) / 2, leaving out boxes
cut by the image border; images with fewer than 5 such boxes are skipped. Prints how far the
estimate lies from the reference and writes the per-image figures as JSON with --out. A constant
bias (granulometry measures the largest disc inside a cell, a box its outer extent) cancels in the
rescale, which compares estimates with the training fields' estimate; the spread around the median
ratio is what moves images off the training scale.
"""

import argparse
import json
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from allscan.domain.scale import estimate_diameter
from allscan.images import decode_file

MIN_BOXES = 5


def reference_diameter(xml_path: Path) -> tuple[float | None, int]:
    """The median red-cell box side of one annotation file, and how many boxes it rests on."""
    root = ET.parse(xml_path).getroot()
    width, height = (int(root.findtext(f"size/{k}")) for k in ("width", "height"))
    sides = []
    for obj in root.iter("object"):
        if obj.findtext("name") != "RBC":
            continue
        x0, y0, x1, y1 = (float(obj.findtext(f"bndbox/{k}")) for k in ("xmin", "ymin", "xmax", "ymax"))
        if x0 <= 1 or y0 <= 1 or x1 >= width - 1 or y1 >= height - 1:
            continue  # cut by the border: its box is smaller than the cell
        sides.append((x1 - x0 + y1 - y0) / 2)
    return (float(np.median(sides)) if len(sides) >= MIN_BOXES else None), len(sides)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images", type=Path)
    parser.add_argument("annotations", type=Path)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    rows, started = [], time.perf_counter()
    for xml_path in sorted(args.annotations.glob("*.xml")):
        image = args.images / f"{xml_path.stem}.jpg"
        reference, boxes = reference_diameter(xml_path)
        if reference is None or not image.is_file():
            continue
        estimate = estimate_diameter(decode_file(image).rgb).diameter
        rows.append({"image": image.name, "reference": reference, "boxes": boxes, "estimate": estimate})
    seconds = time.perf_counter() - started
    measured = [r for r in rows if r["estimate"] is not None]
    ratio = np.array([r["estimate"] / r["reference"] for r in measured])
    error = np.abs(ratio - 1)
    summary = {
        "images": len(rows),
        "no_estimate": len(rows) - len(measured),
        "reference_median_px": float(np.median([r["reference"] for r in rows])),
        "estimate_median_px": float(np.median([r["estimate"] for r in measured])),
        "ratio_median": float(np.median(ratio)),
        "ratio_p5_p95": [float(np.percentile(ratio, 5)), float(np.percentile(ratio, 95))],
        "within_15pct": float(np.mean(error <= 0.15)),
        "within_30pct": float(np.mean(error <= 0.30)),
        "beyond_x1_3": float(np.mean((ratio > 1.3) | (ratio < 1 / 1.3))),
        "within_15pct_of_median_ratio": float(np.mean(np.abs(ratio / np.median(ratio) - 1) <= 0.15)),
        "seconds_per_image": seconds / max(len(rows), 1),
    }
    for key, value in summary.items():
        print(f"{key:>22}  {value if not isinstance(value, float) else round(value, 3)}")
    if args.out:
        args.out.write_text(json.dumps({"summary": summary, "images": rows}, indent=1))


if __name__ == "__main__":
    main()

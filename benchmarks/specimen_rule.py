"""Fit the specimen rule on the Aria validation split's blocks, ship it, and measure it on test.

    python benchmarks/specimen_rule.py ~/data/aria ../shared/data/aria/split.csv [--models models] [--write]

Aria has no patient ids. Its fixed split cuts each subtype's files into blocks of 12 consecutive
file numbers (neighbouring fields of one acquisition) and sends whole blocks to one split: the
blocks stand in for specimens here. Each field is scored through the same pipeline as
``allscan predict`` (label box blanked, as in evaluation); the rule is fitted on val's blocks
(:mod:`allscan.training.specimen_rule`), written beside the models with ``--write``, and then
measured once on test's blocks. Prints one JSON object.
"""

import argparse
import csv
import json
from dataclasses import asdict
from pathlib import Path

from allscan.images import decode_file
from allscan.results.types import ImageResult
from allscan.scoring.pipeline import Pipeline
from allscan.training.dataset import blank_box, list_split
from allscan.training.specimen_rule import fit, measure


def blocks(split_csv: Path) -> dict[str, tuple[str, int]]:
    """``{file name: (block, label)}`` from the split's CSV."""
    with open(split_csv, newline="") as handle:
        return {Path(row["file"]).name: (row["block"], int(row["label"] == "ALL")) for row in csv.DictReader(handle)}


def scored_blocks(pipeline: Pipeline, split_dir: Path, table: dict) -> tuple[list[ImageResult], dict[str, int]]:
    """Every field of a split scored, with its block as its specimen, and each block's label."""
    paths, _ = list_split(split_dir)
    box = pipeline.ensemble.manifest.blank_box
    results, labels = [], {}
    for start in range(0, len(paths), 32):
        chunk = paths[start:start + 32]
        rgbs = [blank_box(decode_file(p).rgb, box) if box else decode_file(p).rgb for p in chunk]
        for path, score in zip(chunk, pipeline.score([pipeline.fields(rgb) for rgb in rgbs])):
            block, label = table[path.name]
            results.append(ImageResult(path, score=score, specimen=block))
            labels[block] = label
    return results, labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("split_csv", type=Path)
    parser.add_argument("--models", type=Path, default=Path(__file__).resolve().parent.parent / "models")
    parser.add_argument("--write", action="store_true", help="write the fitted rule into the models folder")
    args = parser.parse_args()
    pipeline = Pipeline.load(args.models)
    table = blocks(args.split_csv)
    val, val_labels = scored_blocks(pipeline, args.data / "val", table)
    rule, val_figures = fit(val, val_labels, pipeline.config.review_band,
                            f"val split blocks of {args.data} ({len(val_labels)} blocks of 12 consecutive fields)")
    if args.write:
        rule.save(args.models)
    test, test_labels = scored_blocks(pipeline, args.data / "test", table)
    print(json.dumps({"rule": asdict(rule), "val": asdict(val_figures),
                      "test": asdict(measure(rule, test, test_labels))}, indent=2))


if __name__ == "__main__":
    main()

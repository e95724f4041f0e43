"""An image's white cells as GeoJSON that QuPath imports (``--cells-geojson DIR``: File → Import objects).

One FeatureCollection per image; each cell is a Feature whose geometry is its box as a closed Polygon in the
image file's pixels (origin at the top-left corner, as QuPath places its objects), and whose ``properties``
are those QuPath reads: ``objectType`` ``detection``, a ``classification`` (``Blast`` at or above the cell
threshold, else ``Other``, each with its colour as ``[r, g, b]``) and ``measurements`` (a name → number
object, the form QuPath 0.4 and later write and read).

Sources: QuPath's documentation on GeoJSON
(https://qupath.readthedocs.io/en/stable/docs/advanced/exporting_annotations.html: pixel units, origin at
the top-left of the full-resolution image, a FeatureCollection so that properties such as classifications
come along) and on objects (https://qupath.readthedocs.io/en/0.4/docs/concepts/objects.html: cells are
detection objects), and QuPath's reader, ``PathObjectTypeAdapters`` in
https://github.com/qupath/qupath/blob/main/qupath-core/src/main/java/qupath/lib/io/PathObjectTypeAdapters.java
(``objectType``, ``classification`` with ``name`` and ``color``, ``measurements``). Rings run
x0,y0 → x1,y0 → x1,y1 → x0,y1: counterclockwise as RFC 7946 asks, taking y upward.
"""

import json
from pathlib import Path

from allscan.fileio import atomic_write_text
from allscan.results.types import CellFindings, CellResult

BLAST, OTHER = "Blast", "Other"
COLOURS = {BLAST: [200, 0, 0], OTHER: [0, 110, 220]}


def feature_collection(cells: CellFindings) -> dict:
    """The cells as a GeoJSON FeatureCollection (an empty one when none was found)."""
    return {"type": "FeatureCollection", "features": [_feature(c, cells.threshold) for c in cells.cells]}


def _feature(cell: CellResult, threshold: float) -> dict:
    name = BLAST if cell.p_blast >= threshold else OTHER
    x0, y0, x1, y1 = (int(v) for v in (cell.x0, cell.y0, cell.x1, cell.y1))  # JSON takes no numpy numbers
    ring = [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]
    measurements = {"cell": int(cell.cell), "p_blast": float(cell.p_blast),
                    **{f"p_blast_{model}": float(p) for model, p in cell.per_model.items()},
                    "nucleus_area_px": round(float(cell.nucleus_area_px), 1)}
    return {"type": "Feature",
            "geometry": {"type": "Polygon", "coordinates": [ring]},
            "properties": {"objectType": "detection",
                           "classification": {"name": name, "color": COLOURS[name]},
                           "measurements": measurements}}


def write_geojson(path: Path, cells: CellFindings) -> None:
    """Write the cells' FeatureCollection to ``path`` atomically; a file already holding it is left as it is
    (a rerun over stored images rewrites nothing).

    Raises:
        OutputError: The file could not be written.
    """
    text = json.dumps(feature_collection(cells), indent=1) + "\n"
    path = Path(path)
    if path.is_file() and _read(path) == text:
        return
    atomic_write_text(path, text)


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None

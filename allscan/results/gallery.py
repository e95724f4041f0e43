"""The white cells as pictures: their boxes drawn on an image, crops cut around them, and the HTML
report's run-wide cell gallery, where a hematologist pages through every blast-like cell of a run.

Pillow only, no TensorFlow: the report draws these without loading any model.
"""

import base64
import html
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from allscan.paths import path_text
from allscan.results.types import CellFindings, CellResult, ImageResult

BLAST_COLOUR = "#e4002b"
"""Boxes and frames of blasts (p(blast) at or above the threshold): red, told apart from the blue of other
cells also by readers who do not see red against green."""
OTHER_COLOUR = "#1f6fff"
CROP_SIDE = 64
"""Pixels a side of a cell crop in the report (a small JPEG)."""
CROP_MARGIN = 2.0
"""A crop is this many times its nucleus box's longer side: the cell around the nucleus, and a little
of what lies beside it."""
MIN_CROP_SOURCE = 16
"""Fewest pixels a side of a crop before it is resized, so a tiny nucleus still shows its surroundings."""
GALLERY_MAX = 2000
"""Most tiles in the gallery (the most blast-like first): about 3 KB each, so the report stays mailable."""


def colour_of(cell: CellResult, threshold: float) -> str:
    return BLAST_COLOUR if cell.p_blast >= threshold else OTHER_COLOUR


def draw_cells(image: Image.Image, findings: CellFindings, scale: float) -> None:
    """Draw each cell's box on ``image`` (in place), whose pixels are ``scale`` times the image file's;
    blasts in :data:`BLAST_COLOUR`, thicker and on top, other cells in :data:`OTHER_COLOUR`."""
    draw = ImageDraw.Draw(image)
    for cell in sorted(findings.cells, key=lambda c: c.p_blast >= findings.threshold):
        blast = cell.p_blast >= findings.threshold
        pad = 1 if blast else 0  # the thicker line grows outwards, keeping the nucleus in view
        box = (cell.x0 * scale - pad, cell.y0 * scale - pad, max(cell.x1 * scale, cell.x0 * scale + 1) + pad,
               max(cell.y1 * scale, cell.y0 * scale + 1) + pad)
        draw.rectangle(box, outline=colour_of(cell, findings.threshold), width=2 if blast else 1)


def crop_cell(rgb: np.ndarray, cell: CellResult, scale: float, side: int = CROP_SIDE) -> Image.Image:
    """A square crop of ``rgb`` (``scale`` times the file's pixels) centred on the cell, :data:`CROP_MARGIN`
    times its nucleus box, moved inside the image at its edges, resized to ``side`` pixels."""
    height, width = rgb.shape[:2]
    extent = max(cell.x1 - cell.x0, cell.y1 - cell.y0) * CROP_MARGIN * scale
    source = int(min(max(extent, MIN_CROP_SOURCE), width, height))
    x0 = int(min(max(round(cell.x * scale - source / 2), 0), width - source))
    y0 = int(min(max(round(cell.y * scale - source / 2), 0), height - source))
    crop = Image.fromarray(np.ascontiguousarray(rgb[y0:y0 + source, x0:x0 + source]))
    return crop.resize((side, side), Image.LANCZOS if source > side else Image.BICUBIC)


def jpeg_uri(image: Image.Image, quality: int = 80) -> str:
    """``image`` as an embedded JPEG (a ``data:`` URI), its colour at full resolution: halved, as JPEG's
    default keeps it, the one-pixel coloured lines of cell boxes fade into the image."""
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=quality, subsampling=0)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


@dataclass(frozen=True)
class Tile:
    """One cell in the gallery.

    Attributes:
        card: The id of its image's card in the report.
        result: Its image's result.
        cell: The cell.
    """

    card: str
    result: ImageResult
    cell: CellResult


def gallery_tiles(cards: Sequence[tuple[str, ImageResult]], cap: int = GALLERY_MAX) -> tuple[list[Tile], int]:
    """Every cell at or above its image's threshold over the run, highest p(blast) first (then in card
    order), at most ``cap`` of them; and how many such cells there are in all."""
    tiles = [Tile(card, result, cell) for card, result in cards if result.score and result.score.cells
             for cell in result.score.cells.cells if cell.p_blast >= result.score.cells.threshold]
    order = {card: i for i, (card, _) in enumerate(cards)}
    tiles.sort(key=lambda t: (-t.cell.p_blast, order[t.card], t.cell.cell))
    return tiles[:cap], len(tiles)


GALLERY_STYLE = """
.gallery{break-before:page}
.gallery .tiles{display:flex;flex-wrap:wrap;gap:6px}
.tile{width:72px;font-size:10px;text-align:center;color:#222;text-decoration:none}
.tile img,.tile .gone{width:64px;height:64px;display:block;margin:0 auto;border:2px solid #e4002b;border-radius:3px}
.tile .gone{background:#eee;color:#777;line-height:64px;font-size:9px}
.tile .src{color:#666;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
.card:target{outline:3px solid #e4002b}
"""

GALLERY_SCRIPT = """
function filterGallery(){
  var p=parseFloat(document.getElementById('pmin').value), t=document.getElementById('gtext').value.toLowerCase(), n=0;
  document.getElementById('pminv').textContent=p.toFixed(2);
  document.querySelectorAll('.tile').forEach(function(e){
    var ok=parseFloat(e.dataset.p)>=p&&e.dataset.key.indexOf(t)>=0; e.hidden=!ok; if(ok){n++;}
  });
  document.getElementById('gshown').textContent=n;
}
function reveal(id){
  var c=document.getElementById(id);
  if(c&&c.hidden){document.getElementById('verdict').value='any';
    document.getElementById('review').checked=false;document.getElementById('ood').checked=false;applyFilter();}
  return true;
}
document.addEventListener('DOMContentLoaded',function(){
  if(!document.getElementById('pmin')){return;}
  document.getElementById('pmin').addEventListener('input',filterGallery);
  document.getElementById('gtext').addEventListener('input',filterGallery);
  filterGallery();
});
"""


def _tile(tile: Tile, crop: str) -> str:
    e = html.escape
    path = path_text(tile.result.path)
    key = f"{path} {tile.result.specimen}".lower()
    picture = f'<img alt="cell {tile.cell.cell}" src="{crop}">' if crop else '<div class="gone">no image</div>'
    title = f"{path}, cell {tile.cell.cell}" + (f", specimen {tile.result.specimen}" if tile.result.specimen else "")
    return (f'<a class="tile" href="#{tile.card}" onclick="return reveal(\'{tile.card}\')" '
            f'data-p="{tile.cell.p_blast:.4f}" data-key="{e(key)}" title="{e(title)}">{picture}'
            f"<div>{tile.cell.p_blast:.2f}</div><div class=\"src\">{e(Path(path).name)}</div></a>")


def render_gallery(tiles: Sequence[Tile], total: int, crops: dict[tuple[str, int], str]) -> str:
    """The gallery section: its filters (lowest p(blast), file or specimen text) and one tile per cell,
    each linking to its image's card; ``crops`` maps (card, cell) to its crop (absent: the image could
    not be read)."""
    if not tiles:
        return ('<section class="gallery" id="gallery"><h2>Cell gallery</h2>'
                "<p>No cell reached the blast threshold.</p></section>")
    low = min(t.result.score.cells.threshold for t in tiles)
    start = np.floor(low * 100) / 100
    left_out = (f" The {len(tiles):,} most blast-like are shown; {total - len(tiles):,} more are left out here"
                " (every cell is in the results' cell table).") if total > len(tiles) else ""
    body = "".join(_tile(t, crops.get((t.card, t.cell.cell), "")) for t in tiles)
    return (f'<section class="gallery" id="gallery"><h2>Cell gallery ({total:,} cells at or above the blast'
            " threshold)</h2><p>Highest p(blast) first; click a cell for its image." + left_out + "</p>"
            f'<div class="controls">p(blast) at least <input type="range" id="pmin" min="{start:.2f}" max="1" '
            f'step="0.01" value="{start:.2f}"> <span id="pminv">{start:.2f}</span> · file or specimen '
            '<input type="search" id="gtext" placeholder="contains…"> · '
            f'<span id="gshown">{len(tiles)}</span> of {len(tiles)} shown</div>'
            f'<div class="tiles">{body}</div></section>')

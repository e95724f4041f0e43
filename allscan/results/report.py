"""The HTML batch report: one self-contained file a hematologist can page through, flagged images first,
then the run's cell gallery.

No network, no external scripts or fonts: thumbnails and cell crops are embedded, heatmap figures
are linked relative to the report, filtering is plain JavaScript, and printing gives one page per
twelve cards. A lab can mail the one file.
"""

import html
import os
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from PIL import Image

from allscan.fileio import atomic_write_text
from allscan.images import DECODE_MAX_SIDE, ImageError, decode_file
from allscan.models.registry import MODEL_NAMES
from allscan.paths import path_text
from allscan.results.gallery import (GALLERY_SCRIPT, GALLERY_STYLE, colour_of, crop_cell, draw_cells, gallery_tiles,
                                     jpeg_uri, render_gallery)
from allscan.results.types import CellFindings, CellResult, ImageResult, RunCounts, SpecimenSummary
from allscan.results.tables import RunInfo

THUMBNAIL_SIDE = 160
CARDS_PER_PAGE = 12
STRIP_CELLS = 5
"""Most blast-like cells shown on each card."""

_STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Arial,sans-serif;margin:16px;color:#222}
h1{font-size:20px;margin:0 0 8px}
table.meta{border-collapse:collapse;font-size:12px;margin:4px 16px 12px 0;display:inline-table;vertical-align:top}
table.meta td{border:1px solid #ccc;padding:2px 6px}
.controls{margin:8px 0 12px;padding:8px;background:#f3f3f3;border-radius:6px;font-size:14px}
.page{display:grid;grid-template-columns:repeat(auto-fill,minmax(220px,1fr));gap:10px;margin-bottom:10px}
.card{border:2px solid #bbb;border-radius:8px;padding:8px;font-size:12px;background:#fff}
.card.v-ALL{border-color:#c00000}.card.v-normal{border-color:#3a7d44}.card.v-error{border-color:#777}
.card.review{box-shadow:0 0 0 3px #ffd966}
.card img.thumb{width:100%;max-width:200px;display:block;margin:0 auto 6px;cursor:zoom-in;border-radius:4px}
.verdict{font-weight:bold;font-size:15px}.v-ALL .verdict{color:#c00000}.v-normal .verdict{color:#3a7d44}
.flag{background:#ffd966;border-radius:4px;padding:0 4px;margin-left:4px}
.ood{background:#9fd8e8;border-radius:4px;padding:0 4px;margin-left:4px}
.notes{color:#1f5f73;margin-top:3px}
.interrupted{color:#c00000;font-weight:bold}
.bar{display:flex;align-items:center;gap:4px;margin:1px 0}.bar span.n{width:92px}
.bar .track{flex:1;background:#eee;height:8px;border-radius:4px;overflow:hidden}
.bar .fill{background:#8064a2;height:8px}
.name{word-break:break-all;color:#555;margin-top:4px}
.cells b.blast{color:#e4002b}
.strip{display:flex;gap:3px;margin-top:3px}
.strip figure{margin:0;width:20%;max-width:64px;text-align:center;font-size:10px}
.strip img{width:100%;display:block;border:2px solid;border-radius:3px;box-sizing:border-box}
table.specimens{border-collapse:collapse;font-size:13px;margin:6px 0 14px}
table.specimens th,table.specimens td{border:1px solid #ccc;padding:3px 8px;text-align:left}
table.specimens tr.s-ALL td.v{color:#c00000;font-weight:bold}table.specimens tr.s-normal td.v{color:#3a7d44}
table.specimens tr.review td{background:#fff4cc}
#viewer{position:fixed;inset:0;background:rgba(0,0,0,.8);display:none;align-items:center;justify-content:center}
#viewer img{max-width:95vw;max-height:90vh;background:#fff}
@media print{.controls,#viewer{display:none!important}.page{break-after:page;grid-template-columns:repeat(3,1fr)}
.card{break-inside:avoid}body{margin:0}}
"""

_SCRIPT = """
function applyFilter(){
  var v=document.getElementById('verdict').value, r=document.getElementById('review').checked, shown=0;
  var o=document.getElementById('ood').checked;
  document.querySelectorAll('.card').forEach(function(c){
    var ok=(v==='any'||c.dataset.verdict===v)&&(!r||c.dataset.review==='yes')&&(!o||c.dataset.domain==='out');
    c.hidden=!ok; if(ok){shown++;}
  });
  document.getElementById('shown').textContent=shown;
}
function show(src){var v=document.getElementById('viewer');v.querySelector('img').src=src;v.style.display='flex';}
function hide(){document.getElementById('viewer').style.display='none';}
document.addEventListener('DOMContentLoaded',function(){
  var p=new URLSearchParams(location.hash.slice(1));
  if(p.get('verdict')){document.getElementById('verdict').value=p.get('verdict');}
  if(p.get('review')==='1'){document.getElementById('review').checked=true;}
  if(p.get('ood')==='1'){document.getElementById('ood').checked=true;}
  document.getElementById('ood').addEventListener('change',applyFilter);
  document.getElementById('verdict').addEventListener('change',applyFilter);
  document.getElementById('review').addEventListener('change',applyFilter);
  applyFilter();
});
"""


@dataclass(frozen=True)
class _Pictures:
    """What a card embeds: its thumbnail (empty when the image cannot be read any more), with its cells'
    boxes, and crops of some cells by number; ``note`` says why its cells are not drawn."""

    thumbnail: str = ""
    crops: dict[int, str] = field(default_factory=dict)
    note: str = ""


CHANGED_NOTE = "the image file changed since it was scored: its cells are not drawn"

Locate = Callable[[ImageResult], Path]
"""Where a result's image file is now, for its thumbnail: where it was found, unless a watch moved it
(``--move-to``)."""


class ReportPictures:
    """The pictures of each image's card: decoded from its file, where ``locate`` finds it, and with ``keep``
    kept for the next report of the same run while the file and the cells shown stay the same (a watch rewrites
    its report every ``--xlsx-every`` seconds, and decoding every image again cost 2.7 ms an image)."""

    def __init__(self, locate: Locate = lambda result: result.path, keep: bool = False):
        self.locate = locate
        self.keep = keep
        self._kept: dict[Path, tuple[tuple, _Pictures]] = {}

    def __call__(self, result: ImageResult, wanted: Collection[int]) -> _Pictures:
        source = self.locate(result)
        if not self.keep:
            return _pictures(result, wanted, source)
        try:
            stat = os.stat(source)
        except OSError:
            return _pictures(result, wanted, source)
        key = (str(source), stat.st_mtime_ns, stat.st_size, result.sha256, frozenset(wanted))
        kept = self._kept.get(result.path)
        if kept is None or kept[0] != key:
            kept = self._kept[result.path] = (key, _pictures(result, wanted, source))
        return kept[1]


def _pictures(result: ImageResult, wanted: Collection[int], source: Path) -> _Pictures:
    """Decode the image, found at ``source``, once for its thumbnail and the crops of the cells numbered in
    ``wanted``."""
    try:
        decoded = decode_file(source, DECODE_MAX_SIDE)
    except (ImageError, OSError):
        return _Pictures()
    image = Image.fromarray(decoded.rgb)
    image.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
    findings = _findings(result)
    if findings is None:
        return _Pictures(jpeg_uri(image))
    if result.sha256 and decoded.sha256 != result.sha256:  # the boxes belong to the old content
        return _Pictures(jpeg_uri(image), note=CHANGED_NOTE)
    draw_cells(image, findings, image.width / decoded.width)
    scale = decoded.rgb.shape[1] / decoded.width  # below 1 when a large JPEG was decoded reduced
    crops = {c.cell: jpeg_uri(crop_cell(decoded.rgb, c, scale)) for c in findings.cells if c.cell in wanted}
    return _Pictures(jpeg_uri(image), crops)


def _findings(result: ImageResult) -> CellFindings | None:
    return result.score.cells if result.score else None


def _strip(result: ImageResult) -> list[CellResult]:
    findings = _findings(result)
    return findings.most_blast_like(STRIP_CELLS) if findings else []


def _sort_key(result: ImageResult):
    score = result.score
    return (0 if score and score.review else 1, -(score.p_all if score else -1.0), str(result.path))


def _cells_block(findings: CellFindings, pictures: _Pictures) -> str:
    """The card's cell counts and its strip of most blast-like cells, each with its p(blast)."""
    if not findings.cells:
        return '<div class="cells">no white cells found</div>'
    parts = [f'<div class="cells">cells <b>{findings.count}</b> · blasts <b class="blast">{findings.blasts}</b>'
             f" ({findings.blast_pct:.1f}%)</div>"]
    if pictures.note:
        parts.append(f'<div class="notes">{html.escape(pictures.note)}</div>')
    figures = [f'<figure><img alt="cell {c.cell}" src="{pictures.crops[c.cell]}" style="border-color:'
               f'{colour_of(c, findings.threshold)}"><figcaption>{c.p_blast:.2f}</figcaption></figure>'
               for c in findings.most_blast_like(STRIP_CELLS) if c.cell in pictures.crops]
    if figures:
        parts.append(f'<div class="strip" title="most blast-like cells, p(blast)">{"".join(figures)}</div>')
    return "".join(parts)


def _card(card: str, result: ImageResult, pictures: _Pictures, report_dir: Path) -> str:
    e = html.escape
    score = result.score
    review = bool(score and score.review)
    domain = score.domain.domain if score and score.domain else ""
    heatmap = ""
    if result.heatmap:  # a relative URL: any character of a file name is percent-encoded, so it is only data
        heatmap = quote(Path(os.path.relpath(Path(result.heatmap).resolve(), report_dir.resolve())).as_posix(),
                        errors="surrogateescape")
    thumb = pictures.thumbnail
    click = (f' data-heatmap="{e(heatmap)}" onclick="show(this.dataset.heatmap)" title="click for the heatmap"'
             if heatmap else "")
    parts = [f'<div class="card v-{e(result.verdict)}{" review" if review else ""}" id="{card}" '
             f'data-verdict="{e(result.verdict)}" data-review="{"yes" if review else "no"}" '
             f'data-domain="{e(domain)}">']
    if thumb:
        parts.append(f'<img class="thumb" alt="{e(path_text(result.path.name))}" src="{thumb}"{click}>')
    parts.append(f'<div><span class="verdict">{e(result.verdict)}</span>'
                 + ('<span class="flag">review</span>' if review else "")
                 + ('<span class="ood">out of domain</span>' if domain == "out" else "") + "</div>")
    if score:
        parts.append(f"<div>p(ALL) <b>{score.p_all:.3f}</b> · agreement {score.agreement}/{len(score.per_model)}</div>")
        for name in MODEL_NAMES:
            if name in score.per_model:
                p = score.per_model[name]
                parts.append(f'<div class="bar"><span class="n">{e(name)}</span><span class="track">'
                             f'<span class="fill" style="width:{100 * p:.1f}%;display:block"></span></span>'
                             f"<span>{p:.2f}</span></div>")
        if score.cells is not None:
            parts.append(_cells_block(score.cells, pictures))
        if score.domain is not None and score.domain.notes:
            parts.append(f'<div class="notes">{e(score.domain.notes)}</div>')
    else:
        parts.append(f"<div>{e(result.error)}</div>")
    if heatmap:
        parts.append(f'<div><a href="{e(heatmap)}" onclick="show(this.getAttribute(\'href\'));return false">'
                     "heatmap</a></div>")
    if result.specimen:  # a map or pattern may place it in a specimen its path does not name
        parts.append(f'<div class="name">specimen <b>{e(result.specimen)}</b></div>')
    parts.append(f'<div class="name">{e(path_text(result.path))}</div></div>')
    return "".join(parts)


def _site(info: RunInfo) -> str:
    """The site profile that scored the run (its threshold and review band are then the profile's), as the PDF
    names it."""
    site = info.domain.get("site") if isinstance(info.domain, dict) else None
    return f"{site['digest']} ({site.get('source', '')})" if site else "none"


def _meta_table(rows: list[tuple[str, object]]) -> str:
    cells = "".join(f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(str(v))}</td></tr>" for k, v in rows)
    return f'<table class="meta">{cells}</table>'


def _specimen_table(specimens: list[SpecimenSummary]) -> str:
    """Atop the report: one row per specimen, flagged and ALL specimens first."""
    if not specimens:
        return ""
    e = html.escape
    rows = []
    for s in sorted(specimens, key=lambda s: (not s.review, s.verdict != "ALL", s.specimen)):
        top = f"{s.top_p_all:.3f} ({e(Path(s.top_image).name)})" if s.top_p_all is not None else "–"
        rows.append(f'<tr class="s-{e(s.verdict)}{" review" if s.review else ""}"><td>{e(s.specimen)}</td>'
                    f'<td class="v">{e(s.verdict)}</td><td>{"yes" if s.review else ""}</td><td>{s.images}</td>'
                    f"<td>{s.all_}</td><td>{s.normal}</td><td>{s.out_of_domain}</td><td>{s.errors}</td><td>{top}</td>"
                    f"<td>{e(s.notes)}</td></tr>")
    head = "".join(f"<th>{h}</th>" for h in ("specimen", "verdict", "review", "images", "ALL", "normal",
                                             "out of domain", "errors", "top p(ALL)", "notes"))
    return (f"<h2>Specimens ({len(specimens)})</h2>"
            f'<table class="specimens"><tr>{head}</tr>{"".join(rows)}</table>')


def _cell_summary(results: list[ImageResult]) -> list[tuple[str, object]]:
    """The run's white cells and blasts, when cells were looked for in any image."""
    found = [f for f in map(_findings, results) if f is not None]
    if not found:
        return []
    cells, blasts = sum(f.count for f in found), sum(f.blasts for f in found)
    return [("white cells", cells), ("blasts", f"{blasts} ({100 * blasts / cells:.1f}%)" if cells else "0")]


def _cards_and_gallery(ordered: list[ImageResult], report_dir: Path, pictures_of: ReportPictures
                       ) -> tuple[list[str], str]:
    """Each image's card, and the run's cell gallery ("" when no image was looked at for cells).

    Each image is decoded once, for its thumbnail, its strip and its cells in the gallery."""
    cards = [(f"card-{i}", r) for i, r in enumerate(ordered, 1)]
    looked = any(_findings(r) is not None for r in ordered)
    tiles, total = gallery_tiles(cards) if looked else ([], 0)
    in_gallery: dict[str, set[int]] = {}
    for tile in tiles:
        in_gallery.setdefault(tile.card, set()).add(tile.cell.cell)
    rendered, crops = [], {}
    for card, result in cards:
        chosen = in_gallery.get(card, set())
        pictures = pictures_of(result, chosen | {c.cell for c in _strip(result)})
        rendered.append(_card(card, result, pictures, report_dir))
        crops.update({(card, n): uri for n, uri in pictures.crops.items() if n in chosen})
    return rendered, render_gallery(tiles, total, crops) if looked else ""


def render_report(results: Iterable[ImageResult], info: RunInfo, counts: RunCounts, report_dir: Path,
                  specimens: list[SpecimenSummary] = (), pictures: ReportPictures | None = None) -> str:
    """The report's HTML text; ``pictures`` makes each card's pictures [default: from the image's file]."""
    ordered = sorted(results, key=_sort_key)
    run_rows = [
        ("allscan", info.allscan_version), ("finished", info.finished), ("host", info.host),
        ("command", info.command), ("models digest", info.models_digest), ("threshold", f"{info.threshold:.3f}"),
        ("review band", f"{info.review_band[0]:.3f} – {info.review_band[1]:.3f}"), ("site profile", _site(info)),
        *([("specimen rule", info.specimen_rule_text())] if info.specimen_rule else []),
    ]
    summary_rows = [("ALL", counts.all_), ("normal", counts.normal), ("flagged for review", counts.review),
                    ("out of domain (also flagged)", counts.out_of_domain), ("errors", counts.errors),
                    ("images", counts.done), *_cell_summary(ordered)]
    cards, gallery = _cards_and_gallery(ordered, report_dir, pictures or ReportPictures())
    pages = [f'<section class="page">{"".join(cards[start:start + CARDS_PER_PAGE])}</section>'
             for start in range(0, len(cards), CARDS_PER_PAGE)]
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<title>allscan report</title><style>{_STYLE}{GALLERY_STYLE}</style><script>{_SCRIPT}{GALLERY_SCRIPT}</script>"
        "</head><body><h1>allscan batch report</h1>"
        "<p><b>Research use only; not a diagnostic device.</b> Flagged images first, then by p(ALL).</p>"
        + (f'<p class="interrupted">{html.escape(counts.interruption())}</p>' if counts.unscored else "") +
        f"{_meta_table(run_rows)}{_meta_table(summary_rows)}{_specimen_table(list(specimens))}"
        '<div class="controls">Verdict <select id="verdict"><option value="any">any</option>'
        '<option value="ALL">ALL</option><option value="normal">normal</option><option value="error">error</option>'
        '</select> <label><input type="checkbox" id="review"> flagged for review only</label> '
        '<label><input type="checkbox" id="ood"> out of domain only</label> · '
        f'<span id="shown">{len(ordered)}</span> of {len(ordered)} shown'
        + (' · <a href="#gallery">cell gallery</a>' if gallery else "") + "</div>"
        + "".join(pages) + gallery
        + '<div id="viewer" onclick="hide()"><img alt="heatmap"></div></body></html>\n'
    )


def write_report(path: Path, results: Iterable[ImageResult], info: RunInfo, counts: RunCounts,
                 specimens: list[SpecimenSummary] = (), pictures: ReportPictures | None = None) -> None:
    """Write the report atomically."""
    path = Path(path)
    atomic_write_text(path, render_report(results, info, counts, path.parent, specimens, pictures))

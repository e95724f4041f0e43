"""The HTML batch report: one self-contained file a hematologist can page through, flagged images first.

No network, no external scripts or fonts: thumbnails are embedded, heatmap figures are
linked relative to the report, filtering is plain JavaScript, and printing gives one
page per twelve cards.
"""

import base64
import html
import io
import os
from collections.abc import Iterable
from pathlib import Path

from PIL import Image

from allscan.fileio import atomic_write_text
from allscan.images import ImageError, decode_file
from allscan.models.registry import MODEL_NAMES
from allscan.results.types import ImageResult, RunCounts, SpecimenSummary
from allscan.results.tables import RunInfo

THUMBNAIL_SIDE = 160
CARDS_PER_PAGE = 12

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
.bar{display:flex;align-items:center;gap:4px;margin:1px 0}.bar span.n{width:92px}
.bar .track{flex:1;background:#eee;height:8px;border-radius:4px;overflow:hidden}
.bar .fill{background:#8064a2;height:8px}
.name{word-break:break-all;color:#555;margin-top:4px}
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


def _thumbnail(path: Path) -> str:
    """A small embedded JPEG of the image, or an empty string if it cannot be read any more."""
    try:
        rgb = decode_file(path).rgb
    except ImageError:
        return ""
    image = Image.fromarray(rgb)
    image.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _sort_key(result: ImageResult):
    score = result.score
    return (0 if score and score.review else 1, -(score.p_all if score else -1.0), str(result.path))


def _card(result: ImageResult, report_dir: Path) -> str:
    e = html.escape
    score = result.score
    review = bool(score and score.review)
    domain = score.domain.domain if score and score.domain else ""
    heatmap = ""
    if result.heatmap:
        heatmap = Path(os.path.relpath(Path(result.heatmap).resolve(), report_dir.resolve())).as_posix()
    thumb = _thumbnail(result.path)
    click = f' onclick="show(\'{e(heatmap)}\')" title="click for the heatmap"' if heatmap else ""
    parts = [f'<div class="card v-{e(result.verdict)}{" review" if review else ""}" '
             f'data-verdict="{e(result.verdict)}" data-review="{"yes" if review else "no"}" '
             f'data-domain="{e(domain)}">']
    if thumb:
        parts.append(f'<img class="thumb" alt="{e(result.path.name)}" src="{thumb}"{click}>')
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
        if score.domain is not None and score.domain.notes:
            parts.append(f'<div class="notes">{e(score.domain.notes)}</div>')
    else:
        parts.append(f"<div>{e(result.error)}</div>")
    if heatmap:
        parts.append(f'<div><a href="{e(heatmap)}" onclick="show(this.getAttribute(\'href\'));return false">'
                     "heatmap</a></div>")
    parts.append(f'<div class="name">{e(str(result.path))}</div></div>')
    return "".join(parts)


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


def render_report(results: Iterable[ImageResult], info: RunInfo, counts: RunCounts, report_dir: Path,
                  specimens: list[SpecimenSummary] = ()) -> str:
    """The report's HTML text."""
    ordered = sorted(results, key=_sort_key)
    run_rows = [
        ("allscan", info.allscan_version), ("finished", info.finished), ("host", info.host),
        ("command", info.command), ("models digest", info.models_digest), ("threshold", f"{info.threshold:.3f}"),
        ("review band", f"{info.review_band[0]:.3f} – {info.review_band[1]:.3f}"),
    ]
    summary_rows = [("ALL", counts.all_), ("normal", counts.normal), ("flagged for review", counts.review),
                    ("out of domain (also flagged)", counts.out_of_domain), ("errors", counts.errors),
                    ("images", counts.done)]
    pages = []
    for start in range(0, len(ordered), CARDS_PER_PAGE):
        cards = "".join(_card(r, report_dir) for r in ordered[start : start + CARDS_PER_PAGE])
        pages.append(f'<section class="page">{cards}</section>')
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<title>allscan report</title><style>{_STYLE}</style><script>{_SCRIPT}</script></head><body>"
        "<h1>allscan batch report</h1>"
        "<p><b>Research use only; not a diagnostic device.</b> Flagged images first, then by p(ALL).</p>"
        f"{_meta_table(run_rows)}{_meta_table(summary_rows)}{_specimen_table(list(specimens))}"
        '<div class="controls">Verdict <select id="verdict"><option value="any">any</option>'
        '<option value="ALL">ALL</option><option value="normal">normal</option><option value="error">error</option>'
        '</select> <label><input type="checkbox" id="review"> flagged for review only</label> '
        '<label><input type="checkbox" id="ood"> out of domain only</label> · '
        f'<span id="shown">{len(ordered)}</span> of {len(ordered)} shown</div>'
        + "".join(pages)
        + '<div id="viewer" onclick="hide()"><img alt="heatmap"></div></body></html>\n'
    )


def write_report(path: Path, results: Iterable[ImageResult], info: RunInfo, counts: RunCounts,
                 specimens: list[SpecimenSummary] = ()) -> None:
    """Write the report atomically."""
    path = Path(path)
    atomic_write_text(path, render_report(results, info, counts, path.parent, specimens))

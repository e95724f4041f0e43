"""The printable report (``--pdf``): a cover page for the run, then a page or more per specimen with its
flagged fields and lines for the reviewer's signature.

Made with ReportLab: pure Python, no browser or system libraries to install (WeasyPrint needs Pango,
a headless Chromium hundreds of MB), and it embeds TrueType fonts. The fonts are the Bitstream Vera
faces ReportLab ships, so the PDF prints the same wherever it is opened.
"""

import io
import os
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from PIL import Image as PILImage
from reportlab.lib import colors
from reportlab.lib.pagesizes import A4, LETTER
from reportlab.lib.styles import ParagraphStyle
from reportlab.lib.units import mm
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.ttfonts import TTFont
from reportlab.platypus import Image, KeepTogether, PageBreak, Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle
from reportlab.rl_config import TTFSearchPath

from allscan.fileio import atomic_write
from allscan.images import ImageError, decode_file
from allscan.paths import path_text
from allscan.results.tables import RunInfo
from allscan.results.types import VERDICT_ALL, VERDICT_ERROR, CellFindings, ImageResult, RunCounts, SpecimenSummary

PAPERS = {"a4": A4, "letter": LETTER}
NOTICE = ("Research use only. allscan is not a diagnostic device: its models were trained on one public dataset "
          "from one hospital, and every result needs review by a qualified person.")
THUMBNAIL_SIDE = 300
"""Pixels of a field's thumbnail: sharp at the 40 mm it is printed."""
FIELDS_PER_SPECIMEN = 24
"""Flagged fields shown per specimen (most suspicious first); the page says how many more there are."""
FAILED_PER_SPECIMEN = 50
"""Images that could not be scored listed per specimen; the page says how many more there are."""
_RED, _GREEN, _GREY = colors.HexColor("#c00000"), colors.HexColor("#3a7d44"), colors.HexColor("#777777")
_VERDICT_COLOURS = {VERDICT_ALL: _RED, VERDICT_ERROR: _GREY}
"""As the HTML report's cards: ALL red, error (no image scored) grey, normal green."""
_SPECIMEN_COLUMNS = (("specimen", None), ("verdict", 16), ("review", 14), ("images", 14), ("ALL", 12),
                     ("out of domain", 18), ("errors", 14), ("top p(ALL)", 18))
"""The cover's specimens table: each column's width in mm, the specimen's the rest of the page, so that a
long name wraps instead of pushing the others off it."""


@dataclass(frozen=True)
class PdfReport:
    """Where the printable report goes and on which paper (``a4`` or ``letter``)."""

    path: Path
    paper: str = "a4"

    def __post_init__(self):
        if self.paper not in PAPERS:
            raise ValueError(f"unknown paper {self.paper!r}; choose one of: {', '.join(PAPERS)}")


@cache
def _styles() -> dict[str, ParagraphStyle]:
    """Paragraph styles in the embedded Vera faces (registered once per process)."""
    for face, file in (("Vera", "Vera.ttf"), ("Vera-Bold", "VeraBd.ttf")):
        path = next(Path(folder) / file for folder in TTFSearchPath if (Path(folder) / file).is_file())
        pdfmetrics.registerFont(TTFont(face, str(path)))
    body = ParagraphStyle("body", fontName="Vera", bulletFontName="Vera", fontSize=9, leading=12)
    return {
        "body": body,
        "small": ParagraphStyle("small", parent=body, fontSize=7.5, leading=9.5),
        "title": ParagraphStyle("title", parent=body, fontName="Vera-Bold", fontSize=18, leading=24, spaceAfter=6),
        "heading": ParagraphStyle("heading", parent=body, fontName="Vera-Bold", fontSize=13, leading=17, spaceAfter=4),
        "notice": ParagraphStyle("notice", parent=body, fontName="Vera-Bold", textColor=_RED, spaceAfter=6),
    }


def _escape(text: object) -> str:
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _table(rows: list[list], widths: list[float] | None = None, header: bool = True) -> Table:
    styles = _styles()
    cells = [[Paragraph(_escape(v), styles["small"]) for v in row] for row in rows]
    table = Table(cells, colWidths=widths, repeatRows=1 if header else 0, hAlign="LEFT")
    commands = [("GRID", (0, 0), (-1, -1), 0.4, colors.grey), ("VALIGN", (0, 0), (-1, -1), "TOP"),
                ("FONTNAME", (0, 0), (-1, -1), "Vera")]
    if header:
        commands.append(("BACKGROUND", (0, 0), (-1, 0), colors.HexColor("#e8e8e8")))
    table.setStyle(TableStyle(commands))
    return table


def _cover(info: RunInfo, counts: RunCounts, specimens: list[SpecimenSummary], width: float) -> list:
    styles = _styles()
    site = info.domain.get("site") if isinstance(info.domain, dict) else None
    run = [["run", ""], ["allscan", info.allscan_version], ["started", info.started], ["finished", info.finished],
           ["host", info.host], ["command", info.command], ["models digest", info.models_digest],
           ["results digest", info.results_digest], ["threshold", f"{info.threshold:.4f}"],
           ["review band", f"{info.review_band[0]:.3f} – {info.review_band[1]:.3f}"],
           ["site profile", f"{site['digest']} ({site.get('source', '')})" if site else "none"],
           *([["specimen rule", info.specimen_rule_text()]] if info.specimen_rule else [])]
    models = [["model", "file", "sha256", "weight"]] + [
        [m["name"], m["file"], m["sha256"][:16] + "…", f"{m['weight']:.3f}"] for m in info.models]
    tally = [["images", "ALL", "normal", "review", "out of domain", "errors", "specimens"],
             [counts.done, counts.all_, counts.normal, counts.review, counts.out_of_domain, counts.errors,
              len(specimens)]]
    story = [Paragraph("allscan batch report", styles["title"]), Paragraph(NOTICE, styles["notice"]),
             *([Paragraph(_escape(counts.interruption()), styles["notice"])] if counts.unscored else []),
             _table(run, [35 * mm, width - 35 * mm]), Spacer(1, 4 * mm),
             _table(models, [30 * mm, 45 * mm, 45 * mm, 20 * mm]), Spacer(1, 4 * mm), _table(tally)]
    if specimens:
        fixed = [w * mm for _, w in _SPECIMEN_COLUMNS[1:]]
        rows = [[name for name, _ in _SPECIMEN_COLUMNS]]
        rows += [[s.specimen, s.verdict, "yes" if s.review else "", s.images, s.all_, s.out_of_domain, s.errors,
                  "–" if s.top_p_all is None else f"{s.top_p_all:.3f}"] for s in specimens]
        story += [Spacer(1, 4 * mm), Paragraph("Specimens", styles["heading"]),
                  _table(rows, [width - sum(fixed), *fixed])]
    return story


def _thumbnail(path: Path, side_mm: float) -> Image | None:
    try:
        rgb = decode_file(path).rgb
    except (ImageError, OSError):
        return None
    image = PILImage.fromarray(rgb)
    image.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    buffer.seek(0)
    scale = side_mm * mm / max(image.size)
    return Image(buffer, image.width * scale, image.height * scale)


def _heatmap(path: str, width: float) -> Image | None:
    """The heatmap figure at ``width``, or None when it is gone or unreadable (the page goes without it)."""
    if not path or not os.path.isfile(path):
        return None
    try:
        with PILImage.open(path) as figure:
            figure.load()
            buffer = io.BytesIO()
            figure.convert("RGB").save(buffer, format="PNG")
            ratio = figure.height / figure.width
    except (OSError, ValueError):  # truncated or not an image (Pillow raises OSError subclasses)
        return None
    buffer.seek(0)
    return Image(buffer, width, width * ratio)


def _blasts(cells: int, blasts: int) -> str:
    return f"{blasts} ({100 * blasts / cells:.1f}%)" if cells else "0"


def _cell_counts(findings: CellFindings) -> str:
    return f"cells {findings.count} · blasts {_blasts(findings.count, findings.blasts)}"


def _field_cell(result: ImageResult, styles: dict) -> list:
    score = result.score
    caption = f"{_escape(path_text(result.path.name))}<br/>{score.verdict} p(ALL) {score.p_all:.3f}"
    caption += f"<br/>{_cell_counts(score.cells)}" if score.cells is not None else ""
    caption += "<br/>review" if score.review else ""
    caption += "<br/>out of domain" if score.out_of_domain else ""
    thumb = _thumbnail(result.path, 40)
    return [thumb, Paragraph(caption, styles["small"])] if thumb else [Paragraph(caption, styles["small"])]


def _specimen_pages(summary: SpecimenSummary, results: list[ImageResult], width: float) -> list:
    styles = _styles()
    colour = _VERDICT_COLOURS.get(summary.verdict, _GREEN)
    title = (f'Specimen {_escape(summary.specimen)}: <font color="{colour.hexval()}">{summary.verdict}</font>'
             + (" · flagged for review" if summary.review else ""))
    figures = [["images", "ALL", "normal", "review", "out of domain", "errors", "top p(ALL)", "rule score"],
               [summary.images, summary.all_, summary.normal, summary.review_images, summary.out_of_domain,
                summary.errors, "–" if summary.top_p_all is None else f"{summary.top_p_all:.3f}",
                "–" if summary.rule_score is None else f"{summary.rule_score:.3f}"]]
    # Summed over its images, a copy of an image counted once as the rule counts it (a cell in two overlapping
    # fields still counts twice).
    found = list({r.sha256 or str(r.path): r.score.cells for r in results
                  if r.score and r.score.cells is not None}.values())
    if found:
        cells, blasts = sum(f.count for f in found), sum(f.blasts for f in found)
        figures[0] += ["white cells", "blasts"]
        figures[1] += [cells, _blasts(cells, blasts)]
    story = [Paragraph(title, styles["heading"]), _table(figures)]
    if summary.notes:
        story.append(Paragraph(f"Notes: {_escape(summary.notes)}", styles["body"]))
    story.append(Spacer(1, 3 * mm))
    if summary.verdict == VERDICT_ERROR and not summary.errors:
        story.append(Paragraph("No image of this specimen was scored before the run was interrupted: it has no "
                               "verdict.", styles["body"]))
    elif summary.verdict == VERDICT_ERROR:
        story.append(Paragraph("No image of this specimen could be scored: it has no verdict.", styles["body"]))
    else:
        story += _flagged_fields(results, width)
    story += _failed_images(results, width)
    return story + [Spacer(1, 5 * mm), KeepTogether([_signature(width)]), PageBreak()]


def _flagged_fields(results: list[ImageResult], width: float) -> list:
    """The fields called ALL or flagged for review, most suspicious first, with the top two's heatmaps."""
    styles = _styles()
    flagged = sorted((r for r in results if r.score and (r.score.verdict == VERDICT_ALL or r.score.review)),
                     key=lambda r: -r.score.p_all)
    if not flagged:
        return [Paragraph("No field is called ALL or flagged for review.", styles["body"])]
    shown = flagged[:FIELDS_PER_SPECIMEN]
    more = f" (the {len(shown)} most suspicious; {len(flagged) - len(shown)} more in the results file)" \
        if len(flagged) > len(shown) else ""
    cells = [_field_cell(r, styles) for r in shown]
    rows = [cells[i:i + 4] + [""] * (4 - len(cells[i:i + 4])) for i in range(0, len(cells), 4)]
    grid = Table(rows, colWidths=[width / 4] * 4, hAlign="LEFT")
    grid.setStyle(TableStyle([("VALIGN", (0, 0), (-1, -1), "TOP"), ("BOTTOMPADDING", (0, 0), (-1, -1), 6),
                              ("FONTNAME", (0, 0), (-1, -1), "Vera")]))
    story = [Paragraph(f"Flagged fields: {len(flagged)}{more}", styles["body"]), grid]
    for result in shown[:2]:
        figure = _heatmap(result.heatmap, width)
        if figure is not None:
            story += [Paragraph(f"Grad-CAM heatmap of {_escape(path_text(result.path.name))}", styles["small"]),
                      figure]
    return story


def _failed_images(results: list[ImageResult], width: float) -> list:
    """The images that could not be scored and why; nothing when every image was scored."""
    failed = [r for r in results if r.score is None]
    if not failed:
        return []
    shown = failed[:FAILED_PER_SPECIMEN]
    more = f" (the first {len(shown)}; {len(failed) - len(shown)} more in the results file)" \
        if len(failed) > len(shown) else ""
    rows = [["file", "why it could not be scored"]] + [[path_text(r.path.name), r.error] for r in shown]
    return [Spacer(1, 3 * mm), Paragraph(f"Images that could not be scored: {len(failed)}{more}", _styles()["body"]),
            _table(rows, [width * 0.4, width * 0.6])]


def _signature(width: float) -> Table:
    signature = Table([["Reviewed by:", ""], ["Date:", ""], ["Comment:", ""], ["", ""]],
                      colWidths=[30 * mm, width - 30 * mm], rowHeights=[10 * mm] * 4, hAlign="LEFT")
    signature.setStyle(TableStyle([("FONTNAME", (0, 0), (-1, -1), "Vera"), ("FONTSIZE", (0, 0), (-1, -1), 9),
                                   ("LINEBELOW", (1, 0), (1, -1), 0.6, colors.black),
                                   ("VALIGN", (0, 0), (-1, -1), "BOTTOM")]))
    return signature


def write_pdf(path: Path, results: Iterable[ImageResult], info: RunInfo, counts: RunCounts,
              specimens: list[SpecimenSummary], paper: str = "a4") -> None:
    """Write the printable report to ``path`` atomically (``paper``: ``a4`` or ``letter``)."""
    size = PAPERS[paper]
    by_specimen: dict[str, list[ImageResult]] = {}
    for result in results:
        by_specimen.setdefault(result.specimen, []).append(result)
    margin = 15 * mm
    width = size[0] - 2 * margin

    def footer(canvas, doc) -> None:
        canvas.saveState()
        canvas.setFont("Vera", 7)
        canvas.drawString(margin, 8 * mm, f"allscan {info.allscan_version} · run {info.started} · models "
                                          f"{info.models_digest} · research use only")
        canvas.drawRightString(size[0] - margin, 8 * mm, f"page {doc.page}")
        canvas.restoreState()

    def build(tmp: Path) -> None:
        story = _cover(info, counts, specimens, width) + [PageBreak()]
        for summary in specimens:
            story += _specimen_pages(summary, by_specimen.get(summary.specimen, []), width)
        document = SimpleDocTemplate(str(tmp), pagesize=size, leftMargin=margin, rightMargin=margin,
                                     topMargin=margin, bottomMargin=margin, title="allscan batch report",
                                     author="allscan", subject=f"run {info.started}",
                                     initialFontName="Vera")  # else an unembedded Helvetica is declared
        document.build(story[:-1] if story and isinstance(story[-1], PageBreak) else story,
                       onFirstPage=footer, onLaterPages=footer)

    atomic_write(Path(path), build)

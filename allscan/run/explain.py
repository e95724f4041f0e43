"""``allscan explain``: one image through the same job steps as a run, with its Grad-CAM figure and, when
cells were looked for, its cells' boxes and the most blast-like of them."""

from dataclasses import replace
from pathlib import Path

from allscan.results.types import ImageResult
from allscan.run.job import prepare, to_results
from allscan.scoring.heatmaps import write_figure
from allscan.scoring.pipeline import Pipeline


def explain(pipeline: Pipeline, image: Path, figure: Path) -> ImageResult:
    """Score ``image`` and write its figure to ``figure``; an unreadable image comes back as an error row
    and writes nothing."""
    prepared = prepare(Path(image), pipeline.maker, keep_display=True)
    result = to_results(pipeline, [prepared], batch_size=1)[0]
    if result.error:
        return result
    write_figure(pipeline, prepared.fields, prepared.display, result.score, Path(figure),
                 (result.width, result.height))
    return replace(result, heatmap=str(figure))

"""``allscan explain``: one image through the same job steps as a run, with its Grad-CAM figure."""

from dataclasses import replace
from pathlib import Path

from allscan.results.types import ImageResult
from allscan.run.job import Job, to_results
from allscan.scoring.heatmaps import HeatmapOptions
from allscan.scoring.pipeline import Pipeline


def explain(pipeline: Pipeline, image: Path, figure: Path) -> ImageResult:
    """Score ``image`` and write its heatmap figure to ``figure``; an unreadable image comes back as an
    error row and writes nothing."""
    job = Job.of(pipeline, batch_size=1, heatmaps=HeatmapOptions(Path(figure).parent, every=True))
    result = to_results(pipeline, [job.prepare(Path(image))], job.heatmaps)[0]
    if result.error:
        return result
    Path(result.heatmap).replace(figure)
    return replace(result, heatmap=str(figure))

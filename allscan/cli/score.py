"""Scoring commands: ``predict`` a batch, ``watch`` a folder, ``explain`` one image."""

from pathlib import Path

import typer

from allscan.cli import loading, options as o
from allscan.cli.app import EXIT_SOME_FAILED, app, console, error_line, terminate_as_interrupt, usage_error
from allscan.cli.display import print_explanation, print_run_notes, print_run_summary, watch_ready_line


@app.command()
def predict(ctx: typer.Context, paths: o.Paths, out: o.PredictOut = Path("results.xlsx"),
            recursive: o.Recursive = True, models: o.Models = None, batch_size: o.BatchSize = 16,
            workers: o.Workers = 2,
            rescore: o.Rescore = False, quiet: o.Quiet = False, heatmaps: o.Heatmaps = None,
            heatmaps_all: o.HeatmapsAll = False, report: o.Report = None, specimen_pattern: o.SpecimenPattern = None,
            specimens: o.SpecimenMap = None, pdf: o.Pdf = None, paper: o.Paper = "a4", engine: o.Engine = "local",
            address: o.Address = None, actors: o.Actors = 1, actor_cpus: o.ActorCpus = 1.0, runtime: o.Runtime = "auto",
            site: o.Site = None, stain_norm: o.StainNorm = True, rbc_diameter: o.RbcDiameter = None,
            cells: o.Cells = True, cells_geojson: o.CellsGeojson = None) -> None:
    """Score images with the ensemble and write one row per image to CSV or Excel.

    Exit code: 0 every image scored, 1 some images failed (their rows say why), 2 usage error (nothing was
    done), 3 an output or the results store could not be written (rerun to finish), 4 internal error,
    130 interrupted.
    """
    from allscan.run.preflight import leaving_no_trace

    with terminate_as_interrupt(), leaving_no_trace([out, report, pdf, heatmaps, cells_geojson]):
        loading.check_heatmap_flags(heatmaps, heatmaps_all)
        loading.check_cell_flags(cells, cells_geojson)
        loading.check_companion_flags(ctx, pdf, engine)
        assign = loading.specimens(paths, specimen_pattern, specimens)
        printable = loading.pdf_report(pdf, paper)
        folders = [("heatmaps folder", heatmaps), ("cells GeoJSON folder", cells_geojson)]
        with loading.preflight(out, report, paths, folders, pdf=pdf, recursive=recursive):
            from allscan.api import Screener
            from allscan.cli.display import LiveProgress
            from allscan.run.engines import EngineError, make_engine

            with loading.refusing(EngineError):
                runner = make_engine(engine, workers, address, actors, actor_cpus)
            # Ray's actors load their own models: the driver only checks them.
            pipeline = loading.pipeline(models, site, stain_norm, rbc_diameter, load_models=engine == "local",
                                        site_origin=loading.site_origin(ctx), runtime=runtime, cells=cells,
                                        need_cells=cells_geojson is not None, given=loading.given_domain_options(ctx))
            with loading.refusing(EngineError), LiveProgress(console, quiet) as live:
                summary = Screener(pipeline).run(paths, out, recursive=recursive, batch_size=batch_size,
                                                 workers=workers, rescore=rescore, engine=runner, observer=live,
                                                 heatmaps=loading.heatmap_options(heatmaps, heatmaps_all),
                                                 report=report, specimens=assign, pdf=printable,
                                                 cells_geojson=cells_geojson)
    if not quiet:
        print_run_summary(summary, report, pdf)
    print_run_notes(summary)
    raise typer.Exit(summary.exit_code)


@app.command()
def watch(ctx: typer.Context, folder: o.Watched, out: o.WatchOut = Path("results.csv"),
          recursive: o.WatchRecursive = True,
          poll: o.Poll = False, settle: o.Settle = 1.0, max_delay: o.MaxDelay = 1.0, batch_size: o.LargestBatch = 16,
          xlsx_every: o.XlsxEvery = 30.0, move_to: o.MoveTo = None, models: o.Models = None,
          quiet: o.WatchQuiet = False,
          heatmaps: o.Heatmaps = None, heatmaps_all: o.HeatmapsAll = False, report: o.WatchReport = None,
          runtime: o.Runtime = "auto", site: o.Site = None, stain_norm: o.StainNorm = True,
          rbc_diameter: o.RbcDiameter = None, cells: o.Cells = True, cells_geojson: o.CellsGeojson = None) -> None:
    """Score images as they land in FOLDER, each exactly once, until Ctrl-C or SIGTERM."""
    from allscan.run.preflight import leaving_no_trace

    loading.check_heatmap_flags(heatmaps, heatmaps_all)
    loading.check_cell_flags(cells, cells_geojson)
    writable = [("heatmaps folder", heatmaps), ("cells GeoJSON folder", cells_geojson), ("--move-to folder", move_to)]
    if move_to is not None:
        writable.append(("watched folder (images are moved out of it)", folder))
    with leaving_no_trace([out, report, heatmaps, cells_geojson, move_to]), \
            loading.preflight(out, report, folders=writable, watched=folder):
        from allscan.cli.display import WatchDisplay
        from allscan.run.watch import WatchConfig, Watcher

        pipeline = loading.pipeline(models, site, stain_norm, rbc_diameter, site_origin=loading.site_origin(ctx),
                                    runtime=runtime, cells=cells, need_cells=cells_geojson is not None,
                                    given=loading.given_domain_options(ctx))
        config = WatchConfig(folder, out, recursive, poll, settle, max_delay, batch_size, xlsx_every, move_to,
                             heatmaps=loading.heatmap_options(heatmaps, heatmaps_all), report=report,
                             cells_geojson=cells_geojson)
        members = [m.name for m in pipeline.ensemble.members]
        watcher = Watcher(config, pipeline,
                          on_ready=lambda catch_up: watch_ready_line(folder, out, members, site, catch_up))
        display = WatchDisplay(console, watcher.stats, quiet)
        watcher.observer = display
        with display:
            watcher.serve(display.refresh)
    if not quiet:
        console.print(f"stopped; {watcher.stats.scored} images scored this session; results in {out}")


@app.command()
def explain(ctx: typer.Context, image: o.Image, out: o.Figure = None, models: o.Models = None,
            runtime: o.Runtime = "auto", site: o.Site = None, stain_norm: o.StainNorm = True,
            rbc_diameter: o.RbcDiameter = None, cells: o.ExplainCells = True) -> None:
    """Print each model's and the ensemble's probability for one image and write its Grad-CAM figure."""
    from allscan.images import is_own_figure
    from allscan.run.preflight import OWN_FIGURE, PreflightError, check_own_file, check_writable_file, leaving_no_trace

    if image.is_dir():
        raise usage_error(f"{image} is a folder: explain takes one image (allscan predict scores a folder)")
    if not image.is_file():
        raise usage_error(f"no such file: {image}")
    if is_own_figure(image):  # predict never scores allscan's figures either: one is no smear
        raise usage_error(f"{image} is a figure allscan wrote, not a smear: explain the image it was drawn from")
    target = out or Path(f"{image.stem}-heatmap.png")  # the current folder: never the input's, which may be scored
    with leaving_no_trace([target]):
        with loading.refusing(PreflightError):
            check_writable_file(target, "heatmap figure")
            check_own_file(target, "heatmap figure", "--out", OWN_FIGURE)
        if target.suffix.lower() != ".png":
            raise usage_error(f"--out {target}: the heatmap figure is a PNG image: name it .png")
        from allscan.run.explain import explain as explain_image

        pipeline = loading.pipeline(models, site, stain_norm, rbc_diameter, site_origin=loading.site_origin(ctx),
                                    runtime=runtime, cells=cells, given=loading.given_domain_options(ctx))
        result = explain_image(pipeline, image, target)
        if result.error:
            error_line(f"{image}: {result.error}")
            raise typer.Exit(EXIT_SOME_FAILED)
    print_explanation(image, result.score, site is not None)
    console.print(f"heatmap: {target}")

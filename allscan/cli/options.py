"""The command line's options, declared once: each is an annotated type a command lists in one line.

Options are grouped into help panels (input, models, output, run, training, other labs' images,
scaling out), as cellpose groups its parser. Help text is Rich markup: a literal ``[`` is written ``\\[``.
"""

import math
from pathlib import Path
from typing import Annotated

import typer

INPUT, MODEL, OUTPUT, RUN, TRAIN, SCALE = "Input", "Models", "Output", "Run", "Training", "Scaling out (Ray)"
DOMAIN = "Other labs' images"


def _seconds(value: float) -> float:
    """A duration: 0 or more, and a number (``nan`` passes a range check, and a negative or NaN settle time scored
    files while they were still being written)."""
    if not math.isfinite(value) or value < 0:
        raise typer.BadParameter(f"must be a number of seconds, 0 or more, not {value:g}")
    return value


Models = Annotated[
    Path | None,
    typer.Option("--models", help="Models folder with a manifest.json \\[default: the shipped models/]",
                 rich_help_panel=MODEL, show_default=False),
]
Heatmaps = Annotated[
    Path | None,
    typer.Option("--heatmaps", help="Write Grad-CAM figures here for ALL and review images.",
                 rich_help_panel=OUTPUT, show_default=False),
]
HeatmapsAll = Annotated[bool, typer.Option("--heatmaps-all", help="Heatmaps for every image.", rich_help_panel=OUTPUT)]
Cells = Annotated[bool, typer.Option("--cells/--no-cells", help="Find the white cells and judge each one: the cells, "
                                     "blasts and blast_pct columns and a cell table (OUT.cells.csv beside a CSV, a "
                                     "Cells sheet in a workbook).", rich_help_panel=OUTPUT)]
CellsGeojson = Annotated[Path | None, typer.Option(
    "--cells-geojson", help="Write each image's cells here as GeoJSON (boxes classed Blast or Other, with p_blast) "
    "for QuPath: File > Import objects.", rich_help_panel=OUTPUT, show_default=False)]
Site = Annotated[
    Path | None,
    typer.Option("--site", envvar="ALLSCAN_SITE", help="Score with a site profile made by allscan adapt, with the "
                 "runtime and domain options it was fitted with (others given are refused).",
                 rich_help_panel=DOMAIN, show_default=False),
]
StainNorm = Annotated[
    bool,
    typer.Option("--stain-norm/--no-stain-norm", help="Normalise the colour of images stained far unlike the "
                 "training images (beyond 3× the out-of-domain colour limit; Reinhard, L*a*b*).",
                 rich_help_panel=DOMAIN),
]
RbcDiameter = Annotated[
    float | None,
    typer.Option("--rbc-diameter", min=1.0, help="Red-cell diameter in pixels in your images (overrides the "
                 "estimate; a lab that knows its camera).", rich_help_panel=DOMAIN, show_default=False),
]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress display or summary (for scripts).",
                                     rich_help_panel=OUTPUT)]
Recursive = Annotated[bool, typer.Option("--recursive/--no-recursive", help="Scan sub-folders.", rich_help_panel=INPUT)]
BatchSize = Annotated[int, typer.Option("--batch-size", min=1, help="Images per model call.", rich_help_panel=RUN)]

# predict
Paths = Annotated[list[Path], typer.Argument(help="Image files and/or folders to score.", show_default=False)]
PredictOut = Annotated[Path, typer.Option("--out", "-o", help="Results file: .csv or .xlsx (the suffix picks the "
                                          "format).", rich_help_panel=OUTPUT)]
Workers = Annotated[int, typer.Option("--workers", min=1, help="Threads reading and decoding images.",
                                      rich_help_panel=RUN)]
Rescore = Annotated[bool, typer.Option("--rescore", help="Score again images already in the results store.",
                                       rich_help_panel=RUN)]
Report = Annotated[Path | None, typer.Option("--report", help="Write a self-contained HTML batch report.",
                                             rich_help_panel=OUTPUT, show_default=False)]
Engine = Annotated[str, typer.Option("--engine", help="local (this process) or ray (pip install "
                                     "\"allscan\\[ray]\").", rich_help_panel=SCALE)]
Address = Annotated[str | None, typer.Option("--address", help="Ray cluster: auto or ray://HOST:PORT "
                                             "\\[default: start a local Ray runtime].", rich_help_panel=SCALE,
                                             show_default=False)]
Actors = Annotated[int, typer.Option("--actors", min=1, help="Ray actors scoring, each holding the models.",
                                     rich_help_panel=SCALE)]
ActorCpus = Annotated[float, typer.Option("--actor-cpus", min=0.01, help="CPUs each Ray actor takes (its models run "
                                          "on as many threads, rounded up).", rich_help_panel=SCALE)]

# watch
Watched = Annotated[Path, typer.Argument(help="Incoming folder to watch (created if missing).", show_default=False)]
WatchOut = Annotated[Path, typer.Option("--out", "-o", help="Results file: .csv (appended row by row) or .xlsx "
                                        "(rewritten every --xlsx-every seconds and at stop).", rich_help_panel=OUTPUT)]
WatchRecursive = Annotated[bool, typer.Option("--recursive/--no-recursive", help="Watch sub-folders.",
                                              rich_help_panel=INPUT)]
Poll = Annotated[bool, typer.Option("--poll", help="Poll instead of filesystem events (network shares).",
                                    rich_help_panel=INPUT)]
Settle = Annotated[float, typer.Option(help="Seconds a file must stay unchanged before it is scored.",
                                       callback=_seconds, rich_help_panel=INPUT)]
MaxDelay = Annotated[float, typer.Option("--max-delay", help="Longest an image waits for a batch to fill (s).",
                                         callback=_seconds, rich_help_panel=RUN)]
LargestBatch = Annotated[int, typer.Option("--batch-size", min=1, help="Largest batch.", rich_help_panel=RUN)]
XlsxEvery = Annotated[float, typer.Option("--xlsx-every", help="Seconds between rewrites of the .xlsx, the tables "
                                          "beside a CSV and the report.",
                                          callback=_seconds, rich_help_panel=OUTPUT)]
MoveTo = Annotated[Path | None, typer.Option("--move-to", help="Move each image, once its row is stored, to "
                                             "DIR/ALL, DIR/normal, DIR/review or DIR/error.",
                                             rich_help_panel=OUTPUT, show_default=False)]
WatchQuiet = Annotated[bool, typer.Option("--quiet", "-q", help="One log line per image instead of the live view.",
                                          rich_help_panel=OUTPUT)]
WatchReport = Annotated[Path | None, typer.Option("--report", help="HTML batch report, rewritten with the outputs.",
                                                  rich_help_panel=OUTPUT, show_default=False)]

# explain
Image = Annotated[Path, typer.Argument(help="One image file.", show_default=False)]
Figure = Annotated[Path | None, typer.Option("--out", "-o", help="Heatmap figure \\[default: ./IMAGE-heatmap.png, "
                                             "in the current folder].",
                                             rich_help_panel=OUTPUT, show_default=False)]
ExplainCells = Annotated[bool, typer.Option("--cells/--no-cells", help="Find the white cells and judge each one: "
                                            "their count and blasts, boxed in the figure with the most blast-like.",
                                            rich_help_panel=OUTPUT)]

# training
TrainData = Annotated[Path, typer.Argument(help="Folder with train/ and val/, each holding normal/ and ALL/.",
                                           show_default=False)]
ModelName = Annotated[str, typer.Option("--model", "-m", help="Registry name, or 'all' for the four in turn.",
                                        rich_help_panel=MODEL)]
ShipInto = Annotated[Path, typer.Option("--out", "-o", help="Models folder to ship the best epoch into.",
                                        rich_help_panel=OUTPUT)]
RunsDir = Annotated[Path | None, typer.Option("--runs-dir", help="Checkpoints and logs \\[default: ~/allscan-runs].",
                                              rich_help_panel=OUTPUT, show_default=False)]
Epochs = Annotated[int | None, typer.Option(min=1, help="Epochs \\[default: the model's registry entry].",
                                            rich_help_panel=TRAIN, show_default=False)]
StepBatch = Annotated[int, typer.Option("--batch-size", min=1, help="Images per step.", rich_help_panel=TRAIN)]
InputSize = Annotated[int | None, typer.Option("--input-size", min=32, help="Square input side, at least 32 (five "
                                               "halvings in the networks) \\[default: registry].",
                                               rich_help_panel=TRAIN, show_default=False)]
LearningRate = Annotated[float | None, typer.Option("--lr", help="Peak learning rate, above 0 \\[default: registry].",
                                                    rich_help_panel=TRAIN, show_default=False)]
Seed = Annotated[int, typer.Option(help="Random seed.", rich_help_panel=TRAIN)]
RefineEpochs = Annotated[int, typer.Option("--refine-epochs", min=1, help="Epochs of the second (refining) round "
                                           "of multiple-instance learning.", rich_help_panel=TRAIN)]
CellBatch = Annotated[int, typer.Option("--batch-size", min=1, help="Cell crops per step.", rich_help_panel=TRAIN)]
Weights = Annotated[Path | None, typer.Option("--weights", help="Start the backbone from this weights file (e.g. "
                                              "ImageNet weights on disk; nothing is downloaded).",
                                              rich_help_panel=TRAIN, show_default=False)]
Resume = Annotated[bool, typer.Option("--resume", help="Continue from the last checkpoint in the run folder, with "
                                      "the run's settings (a larger --epochs extends it).", rich_help_panel=TRAIN)]
Restart = Annotated[bool, typer.Option("--restart", help="Start again in a run folder that holds a run, deleting its "
                                       "checkpoints.", rich_help_panel=TRAIN)]
TrainBlankBox = Annotated[str | None, typer.Option(
    "--blank-box", help="x0,y0,x1,y1 (224×224 coordinates) to blank in every image, or 'none'. "
    "\\[default: the Aria scale-bar label box]", rich_help_panel=INPUT, show_default=False)]
RunDir = Annotated[Path, typer.Argument(help="A run folder of `allscan train` (e.g. ~/allscan-runs/vgg16).",
                                        show_default=False)]
RunData = Annotated[Path, typer.Argument(help="The data folder the run trained on (train/ and val/).",
                                         show_default=False)]
ValData = Annotated[Path, typer.Argument(help="Folder holding val/ with normal/ and ALL/.", show_default=False)]
PoolTrain = Annotated[bool, typer.Option(
    "--pool-train", help="Also fit the calibration on train/ predictions and check the threshold's recall bound "
    "on train/ and val/ together (only for models that do not fit train/ better than val/).")]
Reconvert = Annotated[bool, typer.Option(
    "--reconvert", help="Convert every member (and the cell classifier) to OpenVINO again first, int8 or bfloat16 "
    "where the shipping rule accepts it on this machine, and refit the domain reference and the cell statistics.")]
SplitData = Annotated[Path, typer.Argument(help="Folder holding the split folder (normal/ and ALL/ inside).",
                                           show_default=False)]
Split = Annotated[str, typer.Option(help="Split folder to evaluate.", rich_help_panel=INPUT)]
FiguresOut = Annotated[Path | None, typer.Option("--out", "-o", help="Write the figures as JSON.",
                                                 rich_help_panel=OUTPUT, show_default=False)]
Box = Annotated[str, typer.Option(help="Label box: 'blank' (as in training), 'raw' (left in) or 'swap' (pasted from "
                                  "an image of the other class).", rich_help_panel=INPUT)]
BlankBox = Annotated[str | None, typer.Option("--blank-box", help="x0,y0,x1,y1 or 'none' \\[default: manifest].",
                                              rich_help_panel=INPUT, show_default=False)]
ShortcutCheck = Annotated[bool, typer.Option("--shortcut-check", help="Also score raw and box-swapped images and "
                                             "count verdict flips.", rich_help_panel=RUN)]
Plots = Annotated[Path | None, typer.Option("--plots", help="Write ROC, precision-recall, reliability and "
                                            "confusion-matrix figures (PNG) here.", rich_help_panel=OUTPUT,
                                            show_default=False)]
DomainData = Annotated[Path, typer.Argument(help="Dataset with train/ and val/ (each normal/ and ALL/).",
                                            show_default=False)]

# adapt
Labelled = Annotated[Path, typer.Argument(help="Folder with ALL/ and normal/ sub-folders of your lab's labelled "
                                          "images (at least 5 each).", show_default=False)]
ProfileOut = Annotated[Path, typer.Option("--out", "-o", help="Site profile folder to write.", rich_help_panel=OUTPUT)]

# specimens and printed reports
SPECIMENS = "Specimens and printed reports"
SpecimenPattern = Annotated[str | None, typer.Option(
    "--specimen-pattern", help="Regular expression on the file name whose first group is the specimen (e.g. an "
    "accession number) \\[default: each image's folder is its specimen].", rich_help_panel=SPECIMENS,
    show_default=False)]
SpecimenMap = Annotated[Path | None, typer.Option(
    "--specimens", help="CSV with the columns path and specimen (as a lab system exports it): each image's specimen.",
    rich_help_panel=SPECIMENS, show_default=False)]
Pdf = Annotated[Path | None, typer.Option("--pdf", help="Write a printable report: a cover page, then a page per "
                                          "specimen with its flagged fields and lines to sign.",
                                          rich_help_panel=SPECIMENS, show_default=False)]
Paper = Annotated[str, typer.Option("--paper", help="Paper of the printable report: a4 or letter.",
                                    rich_help_panel=SPECIMENS)]
Runtime = Annotated[str, typer.Option("--runtime", help="What runs the models: auto (OpenVINO where the models ship "
                                      "converted, else Keras; with --site, the runtime the profile was fitted "
                                      "under), openvino or keras.", rich_help_panel=RUN)]

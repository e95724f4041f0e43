"""Measure allscan watch's latency: from an image landing in the folder to its row being written.

Copies images one at a time into a fresh watched folder (waiting for each row before the
next) and prints the median and spread after the warm-up images.

Usage:
    python benchmarks/watch_latency.py [--count 20] [--warmup 3] [--settle 1.0] [--models DIR]
"""

import argparse
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


class _Clock:
    def __init__(self):
        self.done: dict[str, float] = {}
        self.event = threading.Event()

    def start(self, total):
        pass

    def result(self, result, skipped):
        self.done[result.path.name] = time.monotonic()
        self.event.set()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--settle", type=float, default=1.0)
    parser.add_argument("--models", type=Path, default=REPO / "models")
    args = parser.parse_args()

    from benchmarks.bench import make_images

    from allscan.models.ensemble import Ensemble
    from allscan.run.watch import WatchConfig, Watcher

    ensemble = Ensemble.load(args.models)
    with tempfile.TemporaryDirectory(prefix="allscan-watch-") as tmp:
        tmp = Path(tmp)
        sources = make_images(REPO / "sample_images", args.count, tmp / "src")
        incoming = tmp / "incoming"
        incoming.mkdir()
        clock = _Clock()
        watcher = Watcher(WatchConfig(incoming, tmp / "results.csv", settle=args.settle), ensemble, clock)
        thread = threading.Thread(target=watcher.run)
        thread.start()
        time.sleep(1.0)
        latencies = []
        for source in sources:
            clock.event.clear()
            landed = time.monotonic()
            shutil.copy(source, incoming / source.name)
            if not clock.event.wait(60):
                raise SystemExit(f"no row for {source.name} within 60 s")
            latencies.append(clock.done[source.name] - landed)
        watcher.stop()
        thread.join()
    measured = latencies[args.warmup :]
    print(f"settle {args.settle:.2f} s; {len(measured)} images after {args.warmup} warm-up:"
          f" median {statistics.median(measured):.2f} s, min {min(measured):.2f} s, max {max(measured):.2f} s")


if __name__ == "__main__":
    main()

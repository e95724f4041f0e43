"""Peak memory and time of scoring one large camera image against one training-size field.

    python benchmarks/large_image.py IMAGE.jpg [--scale 3.8]

Enlarges IMAGE (e.g. a 1440×900 field of another lab) by ``--scale`` into a JPEG of about
20 megapixels, then runs ``allscan predict`` on it and on a 224×224 crop, each in a fresh
process, and prints peak resident memory and wall time of each.
"""

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image


def run(image: Path, out: Path) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of ``allscan predict image`` in a child process."""
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "allscan", "predict", str(image), "-o", str(out), "-q"], check=False)
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return time.monotonic() - started, peak_kb / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("image", type=Path)
    parser.add_argument("--scale", type=float, default=3.8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        source = Image.open(args.image).convert("RGB")
        small = tmp / "field.jpg"
        source.crop((0, 0, 224, 224)).save(small, quality=92)
        big = tmp / "large.jpg"
        size = (round(source.width * args.scale), round(source.height * args.scale))
        source.resize(size, Image.BICUBIC).save(big, quality=92)
        field_s, field_mb = run(small, tmp / "a.csv")
        large_s, large_mb = run(big, tmp / "b.csv")
        megapixels = size[0] * size[1] / 1e6
        print(f"224x224 field: {field_s:.1f} s, peak RSS {field_mb:.0f} MB")
        print(f"{size[0]}x{size[1]} ({megapixels:.1f} MP): {large_s:.1f} s, peak RSS {large_mb:.0f} MB "
              f"(ru_maxrss is the largest of the children so far)")
        print(f"extra time for the large image: {(large_s - field_s) / megapixels:.2f} s per megapixel")
        print(open(tmp / "b.csv").read())


if __name__ == "__main__":
    main()

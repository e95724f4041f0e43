"""The benchmark script's own command line: a count it cannot measure with is refused at once."""

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "bench.py"


@pytest.mark.parametrize("option", ["--count", "--naive-count", "--batch-size", "--pairs"])
def test_bench_refuses_a_count_of_zero_before_measuring_anything(option):
    done = subprocess.run([sys.executable, str(BENCH), option, "0"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert f"argument {option}: must be at least 1, not 0" in done.stderr

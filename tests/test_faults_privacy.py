"""allscan sends nothing anywhere: the libraries it runs on collect no usage statistics in its process."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("openvino")


@pytest.mark.parametrize("code", [
    "from allscan.models import runtime; runtime._core()",
    "from allscan.training import convert; from tests.utils import tiny_model; import numpy as np; "
    "convert.quantise(convert.to_openvino(tiny_model('alexnet', 32, 0), 'raw', 32), np.zeros((2, 32, 32, 3), "
    "np.uint8))",
])
def test_openvino_and_nncf_record_and_send_no_usage_statistics(tmp_path, code):
    """`import openvino` (the OpenVINO runtime of every predict) sent usage events to Google Analytics and wrote a
    client ID under ~/intel; so did NNCF when `allscan ship` quantised the models."""
    home = tmp_path / "home"
    home.mkdir()
    env = os.environ | {"HOME": str(home), "TF_CPP_MIN_LOG_LEVEL": "2"}
    check = f"{code}; import sys; assert sys.modules['openvino_telemetry'] is None"
    subprocess.run([sys.executable, "-c", check], env=env, check=True, cwd=Path(__file__).parents[1],
                   capture_output=True, timeout=300)
    assert not (home / "intel").exists()


def test_a_ray_runtime_started_by_allscan_reports_no_usage_statistics(monkeypatch):
    """`--engine ray` started a local Ray runtime with Ray's usage statistics on (its default), which its dashboard
    process reports to Anyscale."""
    from types import SimpleNamespace

    from allscan.run.engines import ray as ray_engine

    monkeypatch.delenv(ray_engine.USAGE_STATS, raising=False)
    seen = []
    context = SimpleNamespace()
    fake = SimpleNamespace(data=SimpleNamespace(DataContext=SimpleNamespace(get_current=lambda: context)),
                           is_initialized=lambda: False, shutdown=lambda: None,
                           init=lambda **kwargs: seen.append(os.environ.get(ray_engine.USAGE_STATS)))
    with ray_engine._runtime(fake, None, 1):
        pass
    assert seen == ["0"]
    monkeypatch.setenv(ray_engine.USAGE_STATS, "1")
    with ray_engine._runtime(fake, None, 1):
        pass
    assert seen == ["0", "1"]  # a user who turned them on keeps them

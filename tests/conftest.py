import os
import shutil

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest

from tests.utils import make_models_dir


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory):
    """Four tiny models in the shipped folder format, built once per test session."""
    return make_models_dir(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="session")
def ensemble(models_dir):
    from allscan.ensemble import Ensemble

    return Ensemble.load(models_dir)


@pytest.fixture()
def models_copy(models_dir, tmp_path):
    """A private copy of the tiny models folder that a test may alter."""
    target = tmp_path / "models"
    shutil.copytree(models_dir, target)
    return target

import logging
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
    from allscan.models.ensemble import Ensemble

    return Ensemble.load(models_dir)


@pytest.fixture()
def models_copy(models_dir, tmp_path):
    """A private copy of the tiny models folder that a test may alter."""
    target = tmp_path / "models"
    shutil.copytree(models_dir, target)
    return target


@pytest.fixture(scope="session")
def ray_runtime():
    """One local Ray runtime (2 CPUs, no dashboard) for every Ray test, shut down at the end."""
    ray = pytest.importorskip("ray", reason='the Ray tests need the ray extra: pip install -e ".[test,ray]"')
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def domain_data(tmp_path_factory):
    """A tiny training-style dataset (224-px disc smears, red cells 16 px) with train/ and val/."""
    from tests.utils import write_dataset

    root = tmp_path_factory.mktemp("aria-like")
    write_dataset(root / "train", counts={"normal": 12, "ALL": 12}, seed=0)
    write_dataset(root / "val", counts={"normal": 8, "ALL": 8}, seed=1000)
    return root


@pytest.fixture(scope="session")
def domain_models_dir(models_dir, domain_data, tmp_path_factory):
    """The tiny models with a domain reference fitted on :func:`domain_data`."""
    from allscan.training.fit_domain import refit_domain

    target = tmp_path_factory.mktemp("domain-models")
    shutil.copytree(models_dir, target, dirs_exist_ok=True)
    refit_domain(target, domain_data)
    return target


@pytest.fixture(scope="session")
def domain_ensemble(domain_models_dir):
    from allscan.models.ensemble import Ensemble

    return Ensemble.load(domain_models_dir)

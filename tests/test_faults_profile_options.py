"""A site profile is scored with the domain options and the runtime its heads were fitted under: ``--site`` takes
them where none are given, and refuses, before the models load, an option or a runtime that contradicts them
(its heads would see other features than they were fitted on, silently)."""

import json
import shutil

import pytest
from typer.testing import CliRunner

import allscan
from allscan.cli import app
from allscan.domain.fields import DomainOptions
from allscan.domain.reference import DomainError
from allscan.domain.site import load_profile
from allscan.scoring.pipeline import Pipeline
from tests.utils import adapted_profile, cli_process, disc_smear, lab_fields, profile_meta, resign_profile, save_png


def _invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def _one_line(output):
    return " ".join(output.split())


def _run_info(out):
    return json.loads(out.with_name(out.name + ".run.json").read_text())


@pytest.fixture(scope="module")
def field_image(tmp_path_factory):
    return save_png(tmp_path_factory.mktemp("new") / "field.png",
                 disc_smear(32, (448, 448), seed=9, nuclei=6, cell_rgb=(220, 160, 180)))


# ---- fault 1: the domain options a profile was fitted with -------------------------------------------------------

@pytest.fixture(scope="module")
def fitted_options(domain_models_dir, tmp_path_factory):
    """A profile fitted with ``--no-stain-norm --rbc-diameter 32`` (the tiny models: Keras, no OpenVINO files)."""
    root = tmp_path_factory.mktemp("options")
    result = _invoke("adapt", lab_fields(root / "lab"), "--out", root / "site", "--models", domain_models_dir,
                     "--no-stain-norm", "--rbc-diameter", 32)
    assert result.exit_code == 0, result.output
    return root / "site"


def test_the_profile_records_its_options_and_runtime(fitted_options):
    part = profile_meta(fitted_options)["fields"]
    assert part["options"] == {"stain_norm": False, "rbc_diameter": 32.0} and part["runtime"] == "keras"


def test_predict_with_a_profile_scores_with_the_options_it_was_fitted_with(fitted_options, domain_models_dir,
                                                                           field_image, tmp_path):
    """``adapt --no-stain-norm --rbc-diameter 32`` then ``predict --site``: scored with stain normalisation on and
    the red-cell size estimated, so the heads saw other features than they were fitted on, and nothing said so."""
    out = tmp_path / "site.csv"
    done = _invoke("predict", field_image, "-o", out, "--models", domain_models_dir, "--site", fitted_options, "-q")
    assert done.exit_code == 0, done.output
    info = _run_info(out)
    assert info["domain"]["options"] == {"stain_norm": False, "rbc_diameter": 32.0}
    assert info["domain"]["site"]["runtime"] == {"fields": "keras"}
    explicit = tmp_path / "explicit.csv"
    same = _invoke("predict", field_image, "-o", explicit, "--models", domain_models_dir, "--site", fitted_options,
                   "-q", "--no-stain-norm", "--rbc-diameter", 32)
    assert same.exit_code == 0, same.output
    assert _run_info(explicit)["results_digest"] == info["results_digest"]
    assert explicit.read_text() == out.read_text()
    again = _invoke("predict", field_image, "-o", out, "--models", domain_models_dir, "--site", fitted_options, "-q",
                    "--rbc-diameter", 32)  # a rerun giving the profile's own option: the store's rows stand
    assert again.exit_code == 0, again.output
    assert _run_info(out)["counts"]["skipped (already scored)"] == 1


@pytest.mark.parametrize("option, fitted, given", [
    (("--stain-norm",), "--no-stain-norm", "--stain-norm"),
    (("--rbc-diameter", "40"), "--rbc-diameter 32", "--rbc-diameter 40"),
])
def test_an_option_that_contradicts_the_profile_is_refused_before_the_models_load(
        option, fitted, given, fitted_options, domain_models_dir, field_image, tmp_path):
    code, lines, _, tensorflow = cli_process("predict", field_image, "-o", tmp_path / "r.csv", "--models",
                                             domain_models_dir, "--site", fitted_options, *option)
    assert code == 2 and not tensorflow
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and f"site profile {fitted_options}: its field part was fitted with {fitted}, " \
        f"not {given}; drop {option[0]} to score as it was fitted, or run allscan adapt again with {given}" \
        in _one_line("\n".join(lines))
    assert not (tmp_path / "r.csv").exists()


def test_explain_and_watch_refuse_a_contradicting_option(fitted_options, domain_models_dir, field_image, tmp_path):
    explained = _invoke("explain", field_image, "-o", tmp_path / "f.png", "--models", domain_models_dir, "--site",
                        fitted_options, "--stain-norm")
    watched = _invoke("watch", tmp_path / "in", "-o", tmp_path / "w.csv", "--models", domain_models_dir, "--site",
                      fitted_options, "--rbc-diameter", 20)
    assert explained.exit_code == watched.exit_code == 2
    assert "fitted with --no-stain-norm, not --stain-norm" in _one_line(explained.output)
    assert "fitted with --rbc-diameter 32, not --rbc-diameter 20" in _one_line(watched.output)


def test_the_api_takes_the_profiles_options_and_refuses_others(fitted_options, domain_models_dir):
    screener = allscan.load(domain_models_dir, site=fitted_options)
    assert screener.pipeline.options == DomainOptions(False, 32.0)
    assert allscan.load(domain_models_dir, site=fitted_options, stain_norm=False, rbc_diameter=32).pipeline.digest \
        == screener.pipeline.digest
    with pytest.raises(DomainError, match="fitted with --no-stain-norm, not --stain-norm"):
        allscan.load(domain_models_dir, site=fitted_options, stain_norm=True)
    assert allscan.load(domain_models_dir).pipeline.options == DomainOptions()  # without a profile, the defaults


def test_a_profile_with_bad_recorded_settings_is_refused(fitted_options, tmp_path):
    for name, change, message in (
            ("runtime", lambda meta: meta["fields"].update(runtime="onnx"), "runtime must be one of keras, openvino"),
            ("options", lambda meta: meta["fields"].update(options={"stain_norm": "no", "rbc_diameter": None}),
             "options must give stain_norm")):
        edited = shutil.copytree(fitted_options, tmp_path / name)
        resign_profile(edited, change)
        with pytest.raises(DomainError, match=f"fields: {message}"):
            load_profile(edited)


# ---- fault 2: the runtime a profile was fitted under -------------------------------------------------------------

@pytest.fixture(scope="module")
def ov_models(domain_models_dir, domain_data, tmp_path_factory):
    """The tiny models with a domain reference, field and cell models converted to OpenVINO as shipping does:
    ``auto`` runs OpenVINO."""
    pytest.importorskip("openvino")
    pytest.importorskip("nncf")
    from allscan.training.convert import convert_models

    target = tmp_path_factory.mktemp("ov-models")
    shutil.copytree(domain_models_dir, target, dirs_exist_ok=True)
    convert_models(target, domain_data)
    convert_models(target / "cells", domain_data)
    return target


@pytest.fixture(scope="module")
def openvino_profile(ov_models, tmp_path_factory):
    """A profile with both parts fitted as a lab does, ``auto`` picking OpenVINO."""
    return adapted_profile(tmp_path_factory.mktemp("ov-profile"), ov_models)


def test_a_profile_fitted_under_openvino_is_refused_with_keras(openvino_profile, ov_models, field_image, tmp_path):
    """Adapted under OpenVINO (``auto``), scored with ``--runtime keras``: accepted without a word, while the
    heads' int8 features differ much from Keras float32 ones."""
    meta = profile_meta(openvino_profile)
    assert meta["fields"]["runtime"] == meta["cells"]["runtime"] == "openvino"
    out = tmp_path / "r.csv"
    refused = _invoke("predict", field_image, "-o", out, "--models", ov_models, "--site", openvino_profile,
                      "--runtime", "keras")
    assert refused.exit_code == 2 and not out.exists()
    assert (f"site profile {openvino_profile}: its field part was fitted with --runtime openvino, not --runtime "
            "keras; drop --runtime to score as it was fitted, or run allscan adapt again with --runtime keras"
            ) in _one_line(refused.output)
    with pytest.raises(DomainError, match="fitted with --runtime openvino, not --runtime keras"):
        allscan.load(ov_models, site=openvino_profile, runtime="keras")
    with pytest.raises(DomainError, match="fitted with --runtime openvino, not --runtime keras"):
        allscan.predict([], models=ov_models, site=openvino_profile, runtime="keras")
    done = _invoke("predict", field_image, "-o", out, "--models", ov_models, "--site", openvino_profile, "-q")
    assert done.exit_code == 0, done.output
    assert {m["runtime"].split()[0] for m in _run_info(out)["models"]} == {"openvino"}


def test_the_cell_part_is_refused_under_another_runtime(openvino_profile, ov_models, field_image, tmp_path):
    cells_only = shutil.copytree(openvino_profile, tmp_path / "cells-only")
    resign_profile(cells_only, lambda meta: meta.pop("fields"))
    refused = _invoke("predict", field_image, "-o", tmp_path / "r.csv", "--models", ov_models, "--site", cells_only,
                      "--runtime", "keras")
    assert refused.exit_code == 2
    assert ("its cell part was fitted with --runtime openvino, not --runtime keras; drop --runtime to score as it "
            "was fitted, or run allscan adapt --cells again with --runtime keras") in _one_line(refused.output)
    no_cells = Pipeline.load(ov_models, cells_only, DomainOptions(cells=False), load_models=False, runtime="keras")
    assert no_cells.ensemble.runtime == "keras"  # without the cells its heads are not used


def test_adapt_runtime_keras_is_recorded_and_predict_site_runs_it(ov_models, field_image, tmp_path):
    """``auto`` picks OpenVINO for these models: a profile fitted under Keras was scored in OpenVINO."""
    profile = tmp_path / "site"
    fitted = _invoke("adapt", lab_fields(tmp_path / "lab"), "--out", profile, "--models", ov_models,
                     "--runtime", "keras")
    assert fitted.exit_code == 0, fitted.output
    assert profile_meta(profile)["fields"]["runtime"] == "keras"
    assert (f"site profile {profile}: its field part was fitted with --runtime keras, --stain-norm, the red-cell "
            "size estimated (no --rbc-diameter); --site scores with these") in _one_line(fitted.output)
    out = tmp_path / "r.csv"
    done = _invoke("predict", field_image, "-o", out, "--models", ov_models, "--site", profile, "-q")
    assert done.exit_code == 0, done.output
    assert {m["runtime"] for m in _run_info(out)["models"]} == {"keras"}
    assert _invoke("predict", field_image, "-o", out, "--models", ov_models, "--site", profile,
                   "--runtime", "openvino").exit_code == 2


def test_a_profile_that_predates_the_runtime_record_loads_and_is_held_to_what_auto_picks(
        openvino_profile, ov_models, field_image, tmp_path):
    """Format 3 without ``runtime``: ``adapt`` always ran ``auto``, and the part's models digest fixes what it picks."""
    old = shutil.copytree(openvino_profile, tmp_path / "old")
    resign_profile(old, lambda meta: [meta[part].pop("runtime", None) for part in ("fields", "cells")])
    assert load_profile(old).fields.runtime is None
    refused = _invoke("predict", field_image, "-o", tmp_path / "r.csv", "--models", ov_models, "--site", old,
                      "--runtime", "keras")
    assert refused.exit_code == 2
    assert ("its field part was fitted with --runtime openvino (what auto picks for these models; the profile "
            "predates recording it), not --runtime keras") in _one_line(refused.output)
    pipeline = Pipeline.load(ov_models, old, load_models=False, runtime="openvino")
    assert pipeline.ensemble.runtime == pipeline.cells.ensemble.runtime == "openvino"
    assert Pipeline.load(ov_models, old, load_models=False).digest == pipeline.digest

"""``allscan adapt``: fit a site profile on a lab's own labelled images."""

from pathlib import Path

from allscan.cli import loading, options as o
from allscan.cli.app import app, usage_error
from allscan.cli.display import print_adapted


@app.command()
def adapt(labelled: o.Labelled, out: o.ProfileOut, models: o.Models = None, stain_norm: o.StainNorm = True,
          rbc_diameter: o.RbcDiameter = None) -> None:
    """Fit a site profile on your lab's labelled images: light heads on the models' features, the site's
    threshold and review band, and its domain. Prints cross-validated figures with 95% intervals."""
    from allscan.models.manifest import ManifestError
    from allscan.training.adapt import LabelledSetError, adapt as fit_profile, list_labelled

    if not labelled.is_dir():
        raise usage_error(f"no such folder: {labelled}")
    with loading.refusing(LabelledSetError):
        images = list_labelled(labelled)
    check_profile_out(out)
    pipeline = loading.pipeline(models, None, stain_norm, rbc_diameter)
    with loading.refusing(ManifestError, LabelledSetError):
        result = fit_profile(pipeline, images)
    result.profile.save(out)
    print_adapted(out, result)


def check_profile_out(out: Path) -> None:
    """Refuse, before the models load, a profile folder whose files could not be written at the end."""
    from allscan.domain.site import PROFILE_JSON, PROFILE_NPZ
    from allscan.run.preflight import PreflightError, check_writable_file

    with loading.refusing(PreflightError):
        if out.exists() and not out.is_dir():
            raise PreflightError(f"site profile folder {out} is a file; --out takes a folder")
        for name in (PROFILE_JSON, PROFILE_NPZ):
            check_writable_file(out / name, "site profile file")

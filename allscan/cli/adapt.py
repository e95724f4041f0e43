"""``allscan adapt``: fit a site profile on a lab's own labelled images."""

from allscan.cli import loading, options as o
from allscan.cli.app import app, usage_error
from allscan.cli.display import print_adapted


@app.command()
def adapt(labelled: o.Labelled, out: o.ProfileOut, models: o.Models = None, stain_norm: o.StainNorm = True,
          rbc_diameter: o.RbcDiameter = None) -> None:
    """Fit a site profile on your lab's labelled images: light heads on the models' features, the site's
    threshold and review band, and its domain. Prints cross-validated figures with 95% intervals."""
    from allscan.models.manifest import ManifestError
    from allscan.training.adapt import adapt as fit_profile

    if not labelled.is_dir():
        raise usage_error(f"no such folder: {labelled}")
    pipeline = loading.pipeline(models, None, stain_norm, rbc_diameter)
    with loading.refusing(ManifestError, FileNotFoundError):
        result = fit_profile(pipeline, labelled)
    result.profile.save(out)
    print_adapted(out, result)

"""Other labs' images, per image and without models: physical scale, fields, stain colour, the
out-of-domain guard and its reference, site profiles.

Modules: ``scale`` (red-cell size), ``tiles`` (cutting fields), ``stain`` (colour statistics,
Reinhard, HED shifts), ``fields`` (one image to fields), ``gaussian`` and ``guard`` (the
out-of-domain check), ``reference`` (training-domain statistics shipped with the models),
``site`` (site profiles). Fitting them lives in :mod:`allscan.training`.
"""

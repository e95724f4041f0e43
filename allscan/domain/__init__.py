"""Other labs' images: physical scale and fields, stain colour, the out-of-domain guard, site profiles.

Modules: ``scale`` (red-cell size), ``tiles`` (fields and the aggregation rule), ``stain``
(colour statistics, Reinhard, HED shifts), ``fields`` (one image to fields), ``gaussian`` and
``guard`` (the out-of-domain check), ``reference`` and ``fit`` (training-domain statistics
shipped with the models), ``site`` and ``adapt`` (site profiles), ``pipeline`` (pixels to scores).
"""

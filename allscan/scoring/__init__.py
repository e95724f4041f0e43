"""Pixels to a :class:`~allscan.results.types.Score`: the one pipeline (fields, models, site heads, vote,
out-of-domain guard), the vote (field aggregation, calibrated weighted soft vote, review rule) and
Grad-CAM heatmaps stitched over an image's fields.
"""

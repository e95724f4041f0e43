"""Results and where they go: the typed rows and columns (``types``), the SQLite results store
(``store``, ``schema``, ``lock``), CSV/Excel tables, DataFrames, the HTML report and heatmap figures.
"""

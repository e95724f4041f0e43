"""allscan: screen peripheral blood smear images for Acute Lymphoblastic Leukemia."""

__version__ = "0.1.0"

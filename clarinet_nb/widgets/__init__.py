"""Notebook widgets: the query builder and the series preview (ipywidgets 8)."""

from clarinet_nb.widgets.png import encode_png
from clarinet_nb.widgets.preview import Preview, preview
from clarinet_nb.widgets.query_builder import QueryBuilder

__all__ = ["Preview", "QueryBuilder", "encode_png", "preview"]

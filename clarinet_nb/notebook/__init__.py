"""The notebook layer: DICOM-keyword queries in, typed DataFrames out, pulls, caches."""

from clarinet_nb.notebook.cache import QueryCache
from clarinet_nb.notebook.frames import to_frame
from clarinet_nb.notebook.headers import header_frame, read_headers, write_headers
from clarinet_nb.notebook.pacs import Pacs, connect
from clarinet_nb.notebook.pull import DatasetList

__all__ = [
    "DatasetList",
    "Pacs",
    "QueryCache",
    "connect",
    "header_frame",
    "read_headers",
    "to_frame",
    "write_headers",
]

"""Converters of public datasets into the generic JSONL format (`data/jsonl_format.py`).

Each is a small `convert(source_dir, out_dir, **options)`; everything after conversion is
the one pipeline every dataset goes through.
"""

from dgi_jax.data.converters import amazon_beauty, scifact

CONVERTERS = {"beauty": amazon_beauty.convert, "scifact": scifact.convert}
# Folder of each dataset's raw files under a data root such as ../shared/data.
DEFAULT_SOURCES = {"beauty": "amazon_beauty", "scifact": "scifact"}

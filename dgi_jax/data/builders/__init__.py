"""TFDS builders of the DGI datasets, one module per builder.

Builders live in a package because TFDS looks for a builder's metadata files next to
its module (`dataset_info_from_configs`). Importing a module registers its builder.
"""

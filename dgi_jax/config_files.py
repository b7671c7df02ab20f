"""The repository's config files (`configs/*.py`), found beside the package and loaded.

A config file is a Python file whose `get_config()` returns a locked ConfigDict; a variant
starts from another file's config (`load("default")`) and overrides a few fields.
`dgi --config FILE` loads a file by its path (ml_collections), so the configs are files,
not an installed package: this module is the one place that runs them by name, for the
configs that build on each other, the tests, `dgi benchmark` and the speed scripts.
"""

import os
import pathlib
import runpy

import ml_collections

# Beside the package in a source checkout (or an editable install).
CONFIGS_DIR = pathlib.Path(__file__).resolve().parents[1] / "configs"


def path(name: str) -> pathlib.Path:
  """The file of config `name`: configs/<name>.py."""
  return CONFIGS_DIR / f"{name}.py"


def load(name: str, *args: str) -> ml_collections.ConfigDict:
  """`get_config(*args)` of configs/<name>.py (`dgi --config configs/<name>.py:ARG` passes
  one argument the same way)."""
  return load_file(path(name), *args)


def load_file(file: os.PathLike | str, *args: str) -> ml_collections.ConfigDict:
  """`get_config(*args)` of a config file."""
  return runpy.run_path(os.fspath(file))["get_config"](*args)

"""eval.exclude_history: the request's history items are left out of every ranking."""

import jax.numpy as jnp
import numpy as np
import pytest

from dgi_jax import config_checks, errors
from dgi_jax.baselines import dense
from dgi_jax.benchmark import methods, runner
from conftest import load_config


def test_cosine_ranking_leaves_out_the_excluded_items():
  angles = np.array([0.0, 0.1, 0.2, 0.3, 0.4])  # Item i's cosine with the query falls with i.
  items = jnp.asarray(np.stack([np.cos(angles), np.sin(angles)], axis=1), jnp.float32)
  query = jnp.array([[1.0, 0.0], [1.0, 0.0]])
  exclude = jnp.array([[0, 2, -1], [-1, -1, -1]])  # -1: padding, excludes nothing.
  ranked = np.asarray(dense.cosine_ranking(query, items, 3, exclude))
  np.testing.assert_array_equal(ranked, [[1, 3, 4], [0, 1, 2]])
  np.testing.assert_array_equal(np.asarray(dense.cosine_ranking(query, items, 3)),
                                [[0, 1, 2], [0, 1, 2]])


def test_bm25_rows_without_their_history():
  ranked = np.array([[5, 1, 7, 2, -1], [3, 4, -1, -1, -1]])
  kept = runner._without_items(ranked, [np.array([1, 2]), np.array([], int)], 3)  # pylint: disable=protected-access
  np.testing.assert_array_equal(kept, [[5, 7, -1], [3, 4, -1]])


def _grids(max_history: int, grid):
  config = load_config("benchmark", "scratch")
  with config.unlocked():
    config.data.max_history = max_history
    config.benchmark.exclude_history_grid = grid
  return methods.validation_grids(config)


def test_the_history_choice_comes_before_the_prior_and_only_with_a_history():
  weights = ("popularity_weight", (0.0, 0.01, 0.02, 0.03, 0.05))
  assert _grids(20, (False, True)) == [("exclude_history", (False, True)), weights]
  assert _grids(0, (False, True)) == [weights]  # No history to leave out (SciFact).
  assert _grids(20, ()) == [weights]


def test_the_history_grid_takes_booleans_only():
  config = load_config("benchmark", "scratch")
  with config.unlocked():
    config.benchmark.exclude_history_grid = (0, 1)
  with pytest.raises(errors.ConfigError, match="benchmark.exclude_history_grid"):
    config_checks.check_values(config)

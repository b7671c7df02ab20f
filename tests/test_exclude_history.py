"""eval.exclude_history: the request's history items are left out of every ranking."""

import jax.numpy as jnp
import numpy as np

from dgi_jax.baselines import dense
from dgi_jax.benchmark import runner


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

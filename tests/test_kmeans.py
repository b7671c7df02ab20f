"""k-means codebook initialisation recovers planted clusters."""

import jax
import jax.numpy as jnp
import numpy as np

from dgi_jax import kmeans


def _planted(rs, centers, per_cluster, noise):
  points = np.concatenate([c + noise * rs.randn(per_cluster, centers.shape[1]) for c in centers])
  return jnp.asarray(points, jnp.float32)


def test_kmeans_recovers_separated_clusters_euclidean():
  rs = np.random.RandomState(0)
  centers = np.array([[10.0, 0.0], [0.0, 10.0], [-10.0, 0.0], [0.0, -10.0]])
  points = _planted(rs, centers, 50, 0.5)
  found = np.asarray(kmeans.kmeans(points, 4, 10, jax.random.PRNGKey(0), "dot"))
  found = found[np.lexsort(found.T)]
  expected = centers[np.lexsort(centers.T)]
  np.testing.assert_allclose(found, expected, atol=0.3)


def test_kmeans_cosine_assigns_by_direction():
  rs = np.random.RandomState(1)
  directions = np.eye(3) * 5
  points = _planted(rs, directions, 40, 0.3)
  found = np.asarray(kmeans.kmeans(points, 3, 10, jax.random.PRNGKey(3), "cosine"))
  # Each found centroid points at one planted direction, all three covered.
  assert sorted(np.argmax(found, axis=1).tolist()) == [0, 1, 2]


def test_residual_kmeans_second_level_clusters_residuals():
  rs = np.random.RandomState(2)
  coarse = np.array([[20.0, 0.0], [-20.0, 0.0]])
  fine = np.array([[0.0, 2.0], [0.0, -2.0]])
  points = np.concatenate([c + f + 0.05 * rs.randn(30, 2) for c in coarse for f in fine])
  books = kmeans.residual_kmeans(jnp.asarray(points, jnp.float32), (2, 2), 10,
                                 jax.random.PRNGKey(0), "dot")
  level2 = np.asarray(books[1])
  np.testing.assert_allclose(np.sort(level2[:, 1]), [-2.0, 2.0], atol=0.1)
  np.testing.assert_allclose(level2[:, 0], 0.0, atol=0.1)


def test_empty_clusters_are_reseeded():
  points = jnp.asarray(np.repeat(np.array([[1.0, 0.0], [0.0, 1.0]]), 10, axis=0))
  found = kmeans.kmeans(points, 4, 5, jax.random.PRNGKey(0), "dot")
  assert np.isfinite(np.asarray(found)).all()

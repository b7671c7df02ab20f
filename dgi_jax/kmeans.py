"""Residual k-means initialisation of the codebooks — an explicit step before training.

Level t clusters the residuals left by levels < t (hard assignment), as in RQ-VAE / TIGER.
Assignment follows the model's geometry (cosine or Euclidean) so the initial codes are the
ones the quantizer would pick; centroids are plain means, since the soft code vectors and
residuals use the raw codewords.
"""

from typing import List, Sequence

import jax
import jax.numpy as jnp

from dgi_jax.models.quantizer import l2_normalize


def _assign(points, centroids, geometry):
  if geometry == "cosine":
    return jnp.argmax(l2_normalize(points) @ l2_normalize(centroids).T, axis=-1)
  sq_dist = (jnp.sum(points**2, -1, keepdims=True) - 2 * points @ centroids.T
             + jnp.sum(centroids**2, -1)[None])
  return jnp.argmin(sq_dist, axis=-1)


def _distance(points, centroid, geometry):
  """Distance of every point to one centroid, in the geometry's sense."""
  if geometry == "cosine":
    return 1.0 - l2_normalize(points) @ l2_normalize(centroid)
  return jnp.sum(jnp.square(points - centroid), axis=-1)


def kmeans_plus_plus(points: jax.Array, k: int, rng: jax.Array,
                     geometry: str = "cosine") -> jax.Array:
  """k-means++ seeding: each next centroid is a point drawn with probability ~ distance.

  Random distinct points as seeds often put two seeds in one true cluster and converge to
  a poor split (e.g. splitting every coarse cluster along a fine direction).
  """
  n = points.shape[0]
  first_rng, rest_rng = jax.random.split(rng)
  first = points[jax.random.randint(first_rng, (), 0, n)]
  centroids = jnp.zeros((k, points.shape[1]), points.dtype).at[0].set(first)
  dist = jnp.maximum(_distance(points, first, geometry), 0.0)

  def pick(carry, inputs):
    centroids, dist = carry
    index, key = inputs
    total = dist.sum()
    probs = jnp.where(total > 0, dist / jnp.where(total > 0, total, 1.0), 1.0 / n)
    chosen = points[jax.random.choice(key, n, p=probs)]
    dist = jnp.minimum(dist, jnp.maximum(_distance(points, chosen, geometry), 0.0))
    return (centroids.at[index].set(chosen), dist), None

  (centroids, _), _ = jax.lax.scan(pick, (centroids, dist),
                                   (jnp.arange(1, k), jax.random.split(rest_rng, k - 1)))
  return centroids


def kmeans(points: jax.Array, k: int, num_iters: int, rng: jax.Array,
           geometry: str = "cosine") -> jax.Array:
  """Lloyd's k-means of `points [N, d]` into `k` centroids (k-means++ seeds).

  Empty clusters are re-seeded with random points so every code stays usable.
  """
  n = points.shape[0]
  if k > n:
    raise ValueError(f"k-means: {k} clusters need at least {k} points, got {n}")
  init_rng, reseed_rng = jax.random.split(rng)
  centroids = kmeans_plus_plus(points, k, init_rng, geometry)

  def step(centroids, step_rng):
    assign = _assign(points, centroids, geometry)
    one_hot = jax.nn.one_hot(assign, k, dtype=points.dtype)
    counts = one_hot.sum(0)
    means = (one_hot.T @ points) / jnp.maximum(counts, 1.0)[:, None]
    reseed = points[jax.random.randint(step_rng, (k,), 0, n)]
    return jnp.where((counts > 0)[:, None], means, reseed), None

  centroids, _ = jax.lax.scan(step, centroids, jax.random.split(reseed_rng, num_iters))
  return centroids


def residual_kmeans(embeddings: jax.Array, codebook_sizes: Sequence[int], num_iters: int,
                    rng: jax.Array, geometry: str = "cosine") -> List[jax.Array]:
  """One codebook per level: k-means of the residuals left by the previous levels."""
  residual = embeddings.astype(jnp.float32)
  codebooks = []
  for level, k in enumerate(codebook_sizes):
    centroids = jax.jit(kmeans, static_argnums=(1, 2, 4))(
        residual, k, num_iters, jax.random.fold_in(rng, level), geometry)
    residual = residual - centroids[_assign(residual, centroids, geometry)]
    codebooks.append(centroids)
  return codebooks

"""Dense dual-encoder retrieval: exact cosine top-K of request vs item embeddings.

The Dense baseline of the benchmark trains DGI's own encoder with the in-batch InfoNCE
loss alone (the other loss weights set to 0) and ranks the whole catalogue exactly, so it
isolates what the generative index adds on top of the same encoder and data.
"""

import functools
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from dgi_jax import evaluate, run_setup, sharding
from dgi_jax.data import pipeline
from dgi_jax.models import encoders
from dgi_jax.models.dgi import DGIModel
from dgi_jax.models.quantizer import l2_normalize


# The model is a static argument: a linen module is a hashable dataclass of its config.
@functools.partial(jax.jit, static_argnames=("model", "k"))
def cosine_top_k(model: DGIModel, params, item_vectors, query_tokens, history=None,
                 history_table=None, exclude=None, *, k: int):
  """Item indices [B, k] of the k unit-length `item_vectors` [N, d] closest in cosine to
  the requests [B, Lq] (with history [B, H] read through `history_table` when the model
  reads history items), best first, without the items of `exclude` ([B, E], -1 padded)."""
  z_q = model.apply({"params": params}, query_tokens, history, history_table,
                    method=DGIModel.encode_requests).z_q
  return cosine_ranking(z_q, item_vectors, k, exclude)


def cosine_scores(z_q: jax.Array, item_vectors: jax.Array,
                  exclude: Optional[jax.Array] = None,
                  allowed: Optional[jax.Array] = None) -> jax.Array:
  """float32 [B, N] cosines of the request vectors `z_q` [B, d] with the unit-length
  `item_vectors` [N, d]; -inf for the items of `exclude` (int [B, E], -1 padded) and
  where `allowed` (bool [B, N]) is False."""
  scores = l2_normalize(z_q) @ item_vectors.T
  if allowed is not None:
    scores = jnp.where(allowed, scores, -jnp.inf)
  if exclude is not None:
    num_items = item_vectors.shape[0]  # Padding points past the end and is dropped.
    rows = jnp.arange(scores.shape[0])[:, None]
    scores = scores.at[rows, jnp.where(exclude >= 0, exclude, num_items)].set(
        -jnp.inf, mode="drop")
  return scores


def cosine_ranking(z_q: jax.Array, item_vectors: jax.Array, k: int,
                   exclude: Optional[jax.Array] = None) -> jax.Array:
  """Item indices [B, k] of the unit-length `item_vectors` [N, d] closest in cosine to the
  request vectors `z_q` [B, d], best first; items of `exclude` (int [B, E], -1 padded)
  are left out."""
  return jax.lax.top_k(cosine_scores(z_q, item_vectors, exclude), k)[1]


def dense_rankings(model: DGIModel, params, run_data: run_setup.RunData, config, split: str,
                   k: int, item_embeddings: Optional[np.ndarray] = None):
  """Ranks the catalogue for every request of `split` by cosine(z_q, z_base); without the
  request's history items when `config.eval.exclude_history`. `item_embeddings` (float32
  [N, d]) is z_base of the catalogue when already computed under `params`.

  Returns:
    (ranked int32 [Q, k] item indices best first, relevant int32 [Q, R]) in split order.
  """
  params = sharding.to_local_device(params)
  item_batch = int(config.eval.item_batch_size)
  if item_embeddings is None:
    item_embeddings = run_setup.embed_items(model, params, run_data.catalogue_tokens,
                                            item_batch)
  item_vectors = l2_normalize(jnp.asarray(item_embeddings))
  table = (jnp.asarray(run_setup.history_table(model, params, run_data.catalogue_tokens,
                                           item_batch))
           if model.cfg.history_items else None)
  ranked, relevant = [], []
  for batch in pipeline.iterate_eval(run_data.dataset, run_data.tokenizer, config.data,
                                     split, int(config.eval.batch_size),
                                     catalogue_tokens=run_data.catalogue_tokens):
    history = jnp.asarray(batch["history"]) if table is not None else None
    exclude = jnp.asarray(batch["history"]) if config.eval.exclude_history else None
    top = cosine_top_k(model, params, item_vectors, jnp.asarray(batch["query_tokens"]),
                       history, table, exclude, k=k)
    ranked.append(np.asarray(top)[batch["mask"]])
    relevant.append(batch["relevant"][batch["mask"]])
  return np.concatenate(ranked).astype(np.int32), np.concatenate(relevant)


def make_validation_fn(config, split: str = "validation"):
  """`evaluate_fn(params, run_data, item_embeddings=None) -> {metric: float}` for
  `train.train_and_evaluate`:
  the ranking metrics of `dense_rankings` on `split`, which pick the dense method's best
  checkpoint (`evaluate.make_validation_fn` is the generative search's)."""
  config = encoders.resolve_pretrained(config)  # As training resolves it.
  model = run_setup.build_model(config)

  def evaluate_fn(params, run_data: run_setup.RunData,
                  item_embeddings: Optional[np.ndarray] = None):
    ranked, relevant = dense_rankings(model, params, run_data, config, split,
                                      int(config.eval.k), item_embeddings)
    report = evaluate.ranking_report(ranked, relevant, run_data.dataset.train_popularity,
                                     int(config.eval.num_popularity_buckets))
    return {name: float(value) for name, value in report["metrics"].items()}

  return evaluate_fn

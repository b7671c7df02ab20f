"""Dense dual-encoder retrieval: exact cosine top-K of request vs item embeddings.

The Dense baseline of the benchmark trains DGI's own encoder with the in-batch InfoNCE
loss alone (the other loss weights set to 0) and ranks the whole catalogue exactly, so it
isolates what the generative index adds on top of the same encoder and data.
"""

from typing import Any, Dict, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from dgi_jax import evaluate, popularity, run_setup, sharding
from dgi_jax.data import pipeline
from dgi_jax.models import encoders
from dgi_jax.models.dgi import DGIModel
from dgi_jax.models.quantizer import l2_normalize


def cosine_scores(z_q: jax.Array, item_vectors: jax.Array,
                  exclude: Optional[jax.Array] = None,
                  allowed: Optional[jax.Array] = None,
                  item_prior: Optional[jax.Array] = None) -> jax.Array:
  """float32 [B, N] cosines of the request vectors `z_q` [B, d] with the unit-length
  `item_vectors` [N, d], plus each item's `item_prior` (float32 [N], `popularity.py`)
  when given; -inf for the items of `exclude` (int [B, E], -1 padded) and where
  `allowed` (bool [B, N]) is False."""
  scores = l2_normalize(z_q) @ item_vectors.T
  if item_prior is not None:
    scores = scores + item_prior
  if allowed is not None:
    scores = jnp.where(allowed, scores, -jnp.inf)
  if exclude is not None:
    num_items = item_vectors.shape[0]  # Padding points past the end and is dropped.
    rows = jnp.arange(scores.shape[0])[:, None]
    scores = scores.at[rows, jnp.where(exclude >= 0, exclude, num_items)].set(
        -jnp.inf, mode="drop")
  return scores


def cosine_ranking(z_q: jax.Array, item_vectors: jax.Array, k: int,
                   exclude: Optional[jax.Array] = None,
                   item_prior: Optional[jax.Array] = None) -> jax.Array:
  """Item indices [B, k] of the unit-length `item_vectors` [N, d] closest in cosine (plus
  `item_prior` [N], when given) to the request vectors `z_q` [B, d], best first; items of
  `exclude` (int [B, E], -1 padded) are left out."""
  return jax.lax.top_k(cosine_scores(z_q, item_vectors, exclude, item_prior=item_prior),
                       k)[1]


def encode_split(model: DGIModel, params, run_data: run_setup.RunData, config, split: str,
                 item_embeddings: Optional[np.ndarray] = None):
  """The catalogue and the requests of `split`, encoded once for `rank_encoded`.
  `item_embeddings` (float32 [N, d]) is z_base of the catalogue when already computed
  under `params`.

  Returns:
    (item vectors float32 [N, d] unit length, request vectors z_q float32 [Q, d],
    history int32 [Q, H] (-1 padded), relevant int32 [Q, R]) in split order.
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
  z_q, history, relevant = [], [], []
  for batch in pipeline.iterate_eval(run_data.dataset, run_data.tokenizer, config.data,
                                     split, int(config.eval.batch_size),
                                     catalogue_tokens=run_data.catalogue_tokens):
    read = jnp.asarray(batch["history"]) if table is not None else None
    z = run_setup.encode_requests(model, params, jnp.asarray(batch["query_tokens"]), read,
                                  table).z_q
    z_q.append(np.asarray(z)[batch["mask"]])
    history.append(batch["history"][batch["mask"]])
    relevant.append(batch["relevant"][batch["mask"]])
  return (item_vectors, np.concatenate(z_q), np.concatenate(history).astype(np.int32),
          np.concatenate(relevant))


# One compilation per request batch shape (the last batch of a split is shorter).
_ranking = jax.jit(cosine_ranking, static_argnames=("k",))


def rank_encoded(item_vectors: jax.Array, z_q: np.ndarray, history: np.ndarray, k: int,
                 exclude_history: bool, item_prior: Optional[np.ndarray] = None,
                 batch_size: int = 1024) -> np.ndarray:
  """int32 [Q, k] the items of highest cosine (plus `item_prior` [N]) for each request
  vector of `z_q` [Q, d], best first, without its `history` items ([Q, H], -1 padded)
  when `exclude_history`; `batch_size` requests per product with the catalogue."""
  prior = None if item_prior is None else jnp.asarray(item_prior, jnp.float32)
  ranked = []
  for start in range(0, len(z_q), batch_size):
    exclude = (jnp.asarray(history[start:start + batch_size]) if exclude_history
               else None)
    ranked.append(np.asarray(_ranking(jnp.asarray(z_q[start:start + batch_size]),
                                      item_vectors, k, exclude, prior)))
  if not ranked:
    return np.zeros((0, k), np.int32)
  return np.concatenate(ranked).astype(np.int32)


def dense_rankings(model: DGIModel, params, run_data: run_setup.RunData, config, split: str,
                   k: int, item_embeddings: Optional[np.ndarray] = None,
                   popularity_weight: Optional[float] = None,
                   exclude_history: Optional[bool] = None):
  """Ranks the catalogue for every request of `split` by cosine(z_q, z_base) plus the
  popularity prior at `popularity_weight` (None: `config.eval.popularity_weight`);
  without the request's history items when `exclude_history` (None:
  `config.eval.exclude_history`). `item_embeddings` (float32 [N, d]) is z_base of the
  catalogue when already computed under `params`.

  Returns:
    (ranked int32 [Q, k] item indices best first, relevant int32 [Q, R], history int32
    [Q, H] the requests' history items, -1 padded) in split order.
  """
  item_vectors, z_q, history, relevant = encode_split(model, params, run_data, config,
                                                      split, item_embeddings)
  settings = _settings(config, popularity_weight=popularity_weight,
                       exclude_history=exclude_history)
  return _rank_at(settings, item_vectors, z_q, history, k, run_data), relevant, history


def _settings(config, **chosen) -> Dict[str, Any]:
  """{'exclude_history', 'popularity_weight'}: the config's eval values, replaced by
  those of `chosen` that are not None."""
  settings = {"exclude_history": bool(config.eval.exclude_history),
              "popularity_weight": float(config.eval.popularity_weight)}
  settings.update({name: value for name, value in chosen.items() if value is not None})
  return settings


def _rank_at(settings: Dict[str, Any], item_vectors, z_q, history, k: int,
             run_data: run_setup.RunData) -> np.ndarray:
  """`rank_encoded` under `_settings`' history exclusion and popularity weight."""
  prior = popularity.item_prior(run_data.dataset.train_popularity,
                                settings["popularity_weight"])
  return rank_encoded(item_vectors, z_q, history, k, settings["exclude_history"], prior)


def choose_on_validation(model: DGIModel, params, run_data: run_setup.RunData, config,
                         grids: Sequence[Tuple[str, Sequence[Any]]],
                         split: str = "validation",
                         item_embeddings: Optional[np.ndarray] = None
                         ) -> Dict[str, Dict[str, Any]]:
  """The exact cosine ranking's settings chosen on `split`, one after another, each under
  the choices before it (the generative search's `evaluate.choose_on_validation`).

  Args:
    grids: (setting, values) pairs, 'exclude_history' and/or 'popularity_weight', in the
      order they are chosen; a setting not listed keeps the config's value.

  Returns:
    setting -> `evaluate.best_weight`'s record (by `config.train.best_metric`; ties: the
    first listed). The requests are encoded once.
  """
  item_vectors, z_q, history, relevant = encode_split(model, params, run_data, config,
                                                      split, item_embeddings)
  metric = str(config.train.best_metric)
  settings, selections = _settings(config), {}
  for name, values in grids:
    scores = {}
    for value in values:
      ranked = _rank_at(dict(settings, **{name: value}), item_vectors, z_q, history,
                        int(config.eval.k), run_data)
      scores[value] = evaluate.ranking_score(ranked, relevant,
                                             run_data.dataset.train_popularity, config)
    selections[name] = evaluate.best_weight(split, metric, scores)
    settings[name] = selections[name]["chosen"]
  return selections


def make_validation_fn(config, split: str = "validation"):
  """`evaluate_fn(params, run_data, item_embeddings=None) -> {metric: float}` for
  `train.train_and_evaluate`:
  the ranking metrics of `dense_rankings` on `split`, which pick the dense method's best
  checkpoint (`evaluate.make_validation_fn` is the generative search's)."""
  config = encoders.resolve_pretrained(config)  # As training resolves it.
  model = run_setup.build_model(config)

  def evaluate_fn(params, run_data: run_setup.RunData,
                  item_embeddings: Optional[np.ndarray] = None):
    ranked, relevant, _ = dense_rankings(model, params, run_data, config, split,
                                         int(config.eval.k), item_embeddings)
    report = evaluate.ranking_report(ranked, relevant, run_data.dataset.train_popularity,
                                     int(config.eval.num_popularity_buckets))
    return {name: float(value) for name, value in report["metrics"].items()}

  return evaluate_fn

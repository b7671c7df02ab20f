"""A run's set-up, shared by training, serving and evaluation.

Where a run's data lives (`data_dir`), the dataset and tokenizer it reads (`RunData`,
`prepare_run_data`), the model its config describes and its parameters initialised from
shapes (`build_model`, `init_params`), and the batched passes over the catalogue that
training, the index and the baselines share (`map_batches`, `embed_items`,
`history_table`, `kmeans_init_codebooks`). Nothing here trains: `train.py` holds the loop.
"""

import dataclasses
import functools
import os
from typing import Any, Callable, Optional

from etils import epath
import jax
import jax.numpy as jnp
import numpy as np

from dgi_jax import kmeans, paths, sharding
from dgi_jax.data import dataset as dataset_lib
from dgi_jax.data import pipeline
from dgi_jax.data import tokenizer as tokenizer_lib
from dgi_jax.models import quantizer
from dgi_jax.models import history as history_lib
from dgi_jax.models.config import ModelConfig
from dgi_jax.models.dgi import DGIModel, EncodedRequests


@dataclasses.dataclass
class RunData:
  """What training and evaluation read: the dataset, its tokenizer, the catalogue tokens."""
  dataset: dataset_lib.Dataset
  tokenizer: tokenizer_lib.RequestTokenizer
  catalogue_tokens: np.ndarray  # int32 [num_items, item width <= max_item_len]


def _host_local_data(config, workdir) -> bool:
  """Whether the TFDS files go to each host's disk rather than beside the work directory.

  array_record reads local files only (google/array_record#120), so with an object-store
  work directory (gs://...) and no `data.tfds_dir` they go to a local cache on every host.
  """
  return not config.data.tfds_dir and paths.is_uri(workdir)


def data_dir(config, workdir) -> epath.Path:
  """The TFDS data directory: `data.tfds_dir`, else `<workdir>/tfds`, else a local cache."""
  if config.data.tfds_dir:
    return paths.as_path(config.data.tfds_dir)
  if _host_local_data(config, workdir):
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return epath.Path(cache) / "dgi_jax" / "tfds"
  return paths.as_path(workdir) / "tfds"


def prepare_run_data(config, workdir,
                     tokenizer: Optional[tokenizer_lib.RequestTokenizer] = None) -> RunData:
  """Builds (process 0) or opens the dataset and tokenizer of a run.

  The tokenizer is, in order: `tokenizer` (a trained run's, from its checkpoint), the
  pre-trained encoder's (`model.pretrained`), else a WordPiece trained on the dataset.
  With host-local TFDS files every process builds its own copy (the build is
  deterministic); the WordPiece is still trained once, by process 0, and shared through
  `<workdir>/tfds`.
  """
  build = jax.process_index() == 0
  root = data_dir(config, workdir)
  host_local = _host_local_data(config, workdir)
  tokenizer_root = paths.as_path(workdir) / "tfds" if host_local else root
  if tokenizer is None and config.model.pretrained:
    tokenizer = tokenizer_lib.load_pretrained_tokenizer(config.model.pretrained)
  if build:
    dataset = dataset_lib.prepare_dataset(config.data, root, build=True)
    if tokenizer is None:
      tokenizer = tokenizer_lib.prepare_tokenizer(dataset, config.data, tokenizer_root,
                                                  build=True)
  sharding.sync_processes("data prepared")
  if not build:
    dataset = dataset_lib.prepare_dataset(config.data, root, build=host_local)
    if tokenizer is None:
      tokenizer = tokenizer_lib.prepare_tokenizer(dataset, config.data, tokenizer_root,
                                                  build=False)
  if tokenizer.vocab_size > config.data.vocab_size:
    raise ValueError(f"tokenizer has {tokenizer.vocab_size} tokens > data.vocab_size="
                     f"{config.data.vocab_size}")
  return RunData(dataset, tokenizer,
                 pipeline.encode_catalogue(dataset, tokenizer, config.data))


def build_model(config) -> DGIModel:
  return DGIModel(ModelConfig.from_config(config))


def init_params(model: DGIModel, config, rng: jax.Array, out_sharding=None):
  """Initialises parameters from shapes only (nothing data-dependent happens here)."""
  cfg = model.cfg
  items = jnp.ones((1, config.data.max_item_len), jnp.int32)
  queries = jnp.ones((1, config.data.max_query_len), jnp.int32)
  noise = [jnp.zeros((1, k)) for k in cfg.codebook_sizes]
  history = table = None
  if cfg.history_items:
    history = jnp.zeros((1, cfg.max_history), jnp.int32)
    table = jnp.asarray(history_lib.zero_table(cfg, 1))
  init = lambda r: model.init(r, items, queries, noise, 1.0, True, history,  # noqa: E731
                              table)["params"]
  return jax.jit(init, out_shardings=out_sharding)(rng)


def map_batches(fn: Callable[[np.ndarray], Any], rows: np.ndarray,
                batch_size: int) -> Any:
  """`fn` over fixed-size batches of `rows` [N, ...] (the last one zero-padded, so a
  jitted `fn` compiles once), outputs concatenated along axis 0 and trimmed to N rows.
  `fn` returns an array or a tuple of arrays."""
  n = rows.shape[0]
  padded = np.concatenate([rows, np.zeros((-n % batch_size,) + rows.shape[1:], rows.dtype)])
  outputs = [jax.device_get(fn(padded[i:i + batch_size]))
             for i in range(0, len(padded), batch_size)]
  if isinstance(outputs[0], tuple):
    return tuple(np.concatenate(parts)[:n] for parts in zip(*outputs))
  return np.concatenate(outputs)[:n]


@functools.partial(jax.jit, static_argnums=0)
def _embed_batch(model: DGIModel, params, tokens):
  return model.apply({"params": params}, tokens, method=DGIModel.embed_items)


def embed_items(model: DGIModel, params, item_tokens: np.ndarray,
                batch_size: int = 512) -> np.ndarray:
  """z_base of every row of `item_tokens` [N, L] -> float32 [N, d] (batched, jitted)."""
  return map_batches(functools.partial(_embed_batch, model, params), item_tokens,
                     batch_size)


@functools.partial(jax.jit, static_argnames=("model",))
def encode_requests(model: DGIModel, params, query_tokens: jax.Array, history=None,
                    history_table=None) -> EncodedRequests:
  """`DGIModel.encode_requests`, jitted: the request side of the search
  (`retrieval.py`) and of the frozen encoder's cache (`encoder_cache.py`)."""
  return model.apply({"params": params}, query_tokens, history, history_table,
                     method=DGIModel.encode_requests)


@functools.partial(jax.jit, static_argnums=0)
def _history_rows(model: DGIModel, params, tokens):
  apply = functools.partial(model.apply, {"params": params})
  z_base = apply(tokens, method=DGIModel.embed_items)
  if model.cfg.history_repr == "codes":
    return apply(z_base, method=DGIModel.hard_codes).astype(jnp.int32)
  return quantizer.l2_normalize(z_base)


def history_table(model: DGIModel, params, catalogue_tokens: np.ndarray,
                  batch_size: int = 512) -> np.ndarray:
  """The history table of every catalogue item under `params` (models/history.py):
  int32 [N, m] SIDs ('codes') or float32 [N, d] l2-normalised z_base ('embedding') --
  what the index of the same params holds (`Retriever.history_table`)."""
  return map_batches(functools.partial(_history_rows, model, params), catalogue_tokens,
                     batch_size)


def kmeans_init_codebooks(model: DGIModel, params, catalogue_tokens: np.ndarray, config,
                          rng: jax.Array, item_embeddings: Optional[np.ndarray] = None):
  """Replaces the codebooks (and untied heads) by residual k-means of item embeddings:
  those of `train.kmeans_items` catalogue items, drawn with `rng`, from the encoder under
  `params` or, when given, from `item_embeddings` float32 [N, d] (every item's z_base
  under these params, e.g. the frozen encoder's cache)."""
  cfg = model.cfg
  rng, sample_rng = jax.random.split(rng)
  n = catalogue_tokens.shape[0]
  take = np.asarray(jax.random.permutation(sample_rng, n))[:min(n, config.train.kmeans_items)]
  if item_embeddings is None:
    embeddings = embed_items(model, params, catalogue_tokens[np.sort(take)])
  else:
    embeddings = item_embeddings[np.sort(take)]
  codebooks = kmeans.residual_kmeans(jnp.asarray(embeddings), cfg.codebook_sizes,
                                     config.train.kmeans_iters, rng, cfg.geometry)
  params = dict(params)
  for t, codebook in enumerate(codebooks):
    params[f"codebook_{t}"] = codebook
    if not cfg.tie_heads:
      # Separate parameters that start from the same place: a copy, since one buffer in
      # two leaves of the donated train state fails ("donate the same buffer twice").
      params[f"head_{t}"] = jnp.array(codebook, copy=True)
  return params

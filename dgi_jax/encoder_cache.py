"""A frozen encoder's outputs, computed once per training session instead of every step.

With every encoder parameter frozen (`optim.frozen` naming the tower, or
`optim.freeze_encoder_layers` covering all of a pre-trained encoder's layers), no dropout
and requests made of text (`data.history_repr = 'text'`), the encoder is a constant
function of an item's tokens and of a request's tokens. The train step would then run the
same encoder forward pass over the same examples every epoch, although only the
quantizer, the decoder and the gammas learn. The cache encodes the catalogue and the
training split once, and each batch reads its rows: the step runs only the quantizer, the
decoder and the losses (all-MiniLM-L6-v2 on Beauty: see docs/DESIGN.md, "The frozen
encoder cached").

A partly frozen encoder (`optim.freeze_encoder_layers` = k < the layer count, the
benchmark default) has a constant bottom instead: its embeddings and layers below k.
`BottomCache` holds their output, layer k's input, for the catalogue and the training
requests; the step runs the top layers from it, forward and backward, and every
catalogue pass (k-means, validation) runs only the top layers over the cached items.
BERT-family encoders shared by items and requests only (`frozen_bottom_layers`).

Host memory: the request states are `[R, max_query_len, d]` for the R training requests
(`train.encoder_cache_dtype`, bfloat16 by default: 6.5 GB for Beauty's 131k requests at 64
tokens and d 384; float32 doubles it); the bottom cache adds `[N, Li, d]` for the items.
Every host encodes every training request, since its batches may hold any of them.

On disk (`train.encoder_cache_dir`, which `dgi benchmark` sets to <workdir>/encoder_cache):
a built cache is written under its fingerprint and a later process with the same frozen
weights and data maps it back instead of encoding again (Beauty's bottom cache: 6.3 GiB
read back in seconds, against about 16 minutes to build on 2 CPU cores). As in memory,
one cache is kept: writing one removes the others in that folder.
"""

import dataclasses
import functools
import hashlib
import json
import os
import pathlib
import re
import shutil
from typing import Dict, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from dgi_jax import atomic_write, optim, retrieval, run_setup
from dgi_jax.data import pipeline
from dgi_jax.models import encoders
from dgi_jax.models.dgi import DGIModel
from dgi_jax.train_step import (ITEM_BOTTOM, ITEM_BOTTOM_MASK, ITEM_EMBEDDING,
                                REQUEST_BOTTOM, REQUEST_BOTTOM_MASK, REQUEST_MASK,
                                REQUEST_STATES, REQUEST_VECTOR)

def encoder_is_constant(model: DGIModel, params, config) -> bool:
  """Whether the encoder's outputs are fixed functions of the tokens for the whole run:
  every parameter of the encoder tower(s) frozen, dropout off, no history items (whose
  projection would be trained inside the request encoder)."""
  if model.cfg.dropout_rate > 0 or model.cfg.history_items:
    return False
  labels = optim.param_labels(params, config.optim)
  towers = [labels[name] for name in encoders.ENCODER_COLLECTIONS if name in labels]
  return bool(towers) and all(label == "frozen" for label in jax.tree.leaves(towers))


def frozen_bottom_layers(model: DGIModel, config) -> int:
  """How many bottom layers of the shared encoder are constant functions of the tokens,
  so that `BottomCache` may hold their output: `optim.freeze_encoder_layers` of a
  BERT-family encoder shared by items and requests, without dropout or history items;
  0 where that does not hold. (T5's layers read a position bias that its first layer
  computes, and a separate item tower would need its own cache: both are left out.)"""
  cfg = model.cfg
  if (cfg.encoder != "bert" or cfg.separate_item_encoder or cfg.dropout_rate > 0
      or cfg.history_items):
    return 0
  return int(config.optim.freeze_encoder_layers)


def use_cache(model: DGIModel, params, config) -> bool:
  """Whether training reads the encoder from the cache (`train.cache_frozen_encoder` and a
  constant encoder)."""
  return bool(config.train.cache_frozen_encoder) and encoder_is_constant(model, params,
                                                                          config)


# The share of the host's available memory a cache may take; past it training runs the
# frozen encoder every step instead.
MAX_MEMORY_SHARE = 0.5


def cache_bytes(num_items: int, num_requests: int, config, d_model: int) -> int:
  """Host memory an `EncoderCache` of this data takes."""
  width = int(config.data.max_query_len)
  state_bytes = jnp.dtype(config.train.encoder_cache_dtype).itemsize
  return (num_items * d_model * 4 +
          num_requests * (width * d_model * state_bytes + d_model * 4 + width))


def available_memory_bytes() -> int:
  """Free physical memory now (sysconf), the figure the cache is sized against."""
  return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


@dataclasses.dataclass(frozen=True)
class EncoderCache:
  """The frozen encoder's view of the catalogue and of the training split."""
  item_embeddings: np.ndarray  # float32 [N, d]: z_base of every catalogue item.
  request_states: np.ndarray  # [R, Lq, d] (the cache dtype), row = example_id.
  request_vectors: np.ndarray  # float32 [R, d]: z_q.
  request_masks: np.ndarray  # bool [R, Lq]: True at real tokens.

  def fill(self, batch: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """A training batch with the encoder's outputs in place of its tokens: `query_tokens`
    and `item_tokens` give way to item_embedding [b, d], request_states [b, Lq, d],
    request_vector [b, d] and request_mask [b, Lq]; the other fields stay."""
    rows = batch["example_id"]
    filled = {k: v for k, v in batch.items() if k not in ("query_tokens", "item_tokens")}
    filled[ITEM_EMBEDDING] = self.item_embeddings[batch["item_index"]]
    filled[REQUEST_STATES] = self.request_states[rows]
    filled[REQUEST_VECTOR] = self.request_vectors[rows]
    filled[REQUEST_MASK] = self.request_masks[rows]
    return filled

  def catalogue_embeddings(self, model: DGIModel, params, batch_size: int) -> np.ndarray:
    """z_base of every catalogue item float32 [N, d]: the cached ones, the same under
    every step's params."""
    del model, params, batch_size
    return self.item_embeddings

  @property
  def nbytes(self) -> int:
    return sum(a.nbytes for a in dataclasses.astuple(self))


def training_request_tokens(run_data: run_setup.RunData, config,
                             batch_size: int) -> np.ndarray:
  """int32 [R, Lq]: the query tokens of every training request (row = example_id), as
  the training batches hold them."""
  num_requests = run_data.dataset.num_examples("train")
  tokens = np.zeros((num_requests, int(config.data.max_query_len)), np.int32)
  for batch in pipeline.iterate_eval(run_data.dataset, run_data.tokenizer, config.data,
                                     "train", batch_size,
                                     catalogue_tokens=run_data.catalogue_tokens):
    tokens[batch["example_id"][batch["mask"]]] = batch["query_tokens"][batch["mask"]]
  return tokens


# The cache's request batches are cut to multiples of this width: one compilation per
# multiple up to data.max_query_len (8 at 64 tokens), against the search's powers of two,
# which would leave a batch needing 20 of 32 columns at full width.
CACHE_WIDTH_MULTIPLE = 8


def request_batches(cfg, tokens: np.ndarray, batch_size: int):
  """The batches the cache encodes token rows int32 [R, L] in (requests, and for
  `BottomCache` the catalogue's items too): shortest first, each of `batch_size` rows cut
  to the width its longest row needs
  (`retrieval.trim_for_encoder`, rounded up to `CACHE_WIDTH_MULTIPLE`).

  Yields:
    (row indices int [b], their tokens int32 [b, width]), b <= batch_size.
  """
  order = np.argsort((tokens != cfg.pad_token_id).sum(axis=1), kind="stable")
  for start in range(0, len(tokens), batch_size):
    rows = order[start:start + batch_size]
    yield rows, retrieval.trim_for_encoder(cfg, tokens[rows],
                                           multiple_of=CACHE_WIDTH_MULTIPLE)[0]


def _fixed_row_batches(cfg, tokens: np.ndarray, batch_size: int, desc: str,
                       show_progress: bool):
  """`request_batches` with each batch padded to `batch_size` rows, so that each width
  compiles once, under a progress bar.

  Yields:
    (row indices int [b], width, tokens int32 [batch_size, width]): the first b rows are
    the batch's.
  """
  batches = request_batches(cfg, tokens, batch_size)
  for rows, trimmed in tqdm.tqdm(batches, total=-(-len(tokens) // batch_size), desc=desc,
                                 dynamic_ncols=True, leave=False,
                                 disable=not show_progress or jax.process_index() != 0):
    padded = np.full((batch_size, trimmed.shape[1]), cfg.pad_token_id, np.int32)
    padded[:len(rows)] = trimmed
    yield rows, trimmed.shape[1], jnp.asarray(padded)


def encode_request_rows(model: DGIModel, params, tokens: np.ndarray, batch_size: int,
                        dtype=jnp.float32, show_progress: bool = False):
  """Encodes request tokens int32 [R, Lq] in `request_batches`, so that little of the
  work is padding.

  Returns:
    (states `dtype` [R, Lq, d], z_q float32 [R, d], mask bool [R, Lq]) in the rows' order,
    at the full width Lq the training batches have: zeros past a batch's width, padding
    that the decoder's cross-attention masks out.
  """
  num_requests, width = tokens.shape
  d = model.cfg.d_model
  states = np.zeros((num_requests, width, d), dtype)
  vectors = np.zeros((num_requests, d), np.float32)
  masks = np.zeros((num_requests, width), bool)
  for rows, used, padded in _fixed_row_batches(model.cfg, tokens, batch_size,
                                               "encoder cache", show_progress):
    s, z, m = jax.device_get(run_setup.encode_requests(model, params, padded))
    states[rows, :used] = s[:len(rows)].astype(dtype)
    vectors[rows] = z[:len(rows)]
    masks[rows, :used] = m[:len(rows)]
  return states, vectors, masks


def request_batch_size(config) -> int:
  """Rows per batch of the caches' request (and bottom item) passes."""
  return 4 * int(config.eval.batch_size)


def build(model: DGIModel, params, run_data: run_setup.RunData, config,
          request_tokens: np.ndarray, show_progress: bool = True) -> EncoderCache:
  """Encodes the catalogue and every training request under `params` (batches of
  `eval.item_batch_size` items and `request_batch_size` requests, the requests shortest
  first: `encode_request_rows`). `request_tokens` [R, L]: `training_request_tokens`, the
  rows the cache's key (`fingerprint`) hashed."""
  dtype = jnp.dtype(config.train.encoder_cache_dtype)  # config_checks.ENCODER_CACHE_DTYPES
  items = run_setup.embed_items(model, params, run_data.catalogue_tokens,
                                int(config.eval.item_batch_size))
  return EncoderCache(items, *encode_request_rows(model, params, request_tokens,
                                                  request_batch_size(config), dtype,
                                                  show_progress))


@dataclasses.dataclass(frozen=True)
class BottomCache:
  """The frozen bottom layers' output for the catalogue and for the training split: the
  input of the first trained layer (`frozen_bottom_layers`), at real tokens."""
  num_layers: int  # The frozen bottom layers k: the arrays hold layer k's input.
  item_hidden: np.ndarray  # [N, Li, d] (the cache dtype).
  item_masks: np.ndarray  # bool [N, Li]: True at real tokens.
  request_hidden: np.ndarray  # [R, Lq, d] (the cache dtype), row = example_id.
  request_masks: np.ndarray  # bool [R, Lq].

  def fill(self, batch: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """A training batch with the bottom's outputs in place of its tokens:
    `query_tokens` and `item_tokens` give way to the ITEM_BOTTOM / REQUEST_BOTTOM fields
    (and their masks); the other fields stay."""
    rows, items = batch["example_id"], batch["item_index"]
    filled = {k: v for k, v in batch.items() if k not in ("query_tokens", "item_tokens")}
    filled[ITEM_BOTTOM] = self.item_hidden[items]
    filled[ITEM_BOTTOM_MASK] = self.item_masks[items]
    filled[REQUEST_BOTTOM] = self.request_hidden[rows]
    filled[REQUEST_BOTTOM_MASK] = self.request_masks[rows]
    return filled

  @property
  def nbytes(self) -> int:
    arrays = (self.item_hidden, self.item_masks, self.request_hidden, self.request_masks)
    return sum(a.nbytes for a in arrays)

  def catalogue_embeddings(self, model: DGIModel, params, batch_size: int) -> np.ndarray:
    """z_base of every catalogue item under `params` -> float32 [N, d]: the top layers
    from the cached bottom (for k-means and for each validation pass)."""
    return run_setup.map_batches(
        lambda rows: _top_item_embeddings(model, params, self.item_hidden[rows],
                                          self.item_masks[rows], self.num_layers),
        np.arange(len(self.item_hidden)), batch_size)


def use_bottom_cache(model: DGIModel, params, config) -> bool:
  """Whether training reads the frozen bottom layers' output from a `BottomCache`
  (`train.cache_frozen_encoder`, `frozen_bottom_layers` > 0, and the whole encoder not
  constant, where `EncoderCache` holds more)."""
  return (bool(config.train.cache_frozen_encoder) and frozen_bottom_layers(model, config) > 0
          and not encoder_is_constant(model, params, config))


def bottom_cache_bytes(num_items: int, item_width: int, num_requests: int, config,
                       d_model: int) -> int:
  """Host memory a `BottomCache` of this data takes."""
  width = int(config.data.max_query_len)
  state_bytes = jnp.dtype(config.train.encoder_cache_dtype).itemsize
  return (num_items * item_width * (d_model * state_bytes + 1)
          + num_requests * width * (d_model * state_bytes + 1))


@functools.partial(jax.jit, static_argnums=(0, 3))
def _bottom(model: DGIModel, params, tokens, num_layers: int):
  return model.apply({"params": params}, tokens, num_layers,
                     method=DGIModel.encoder_bottom)


@functools.partial(jax.jit, static_argnums=(0, 4))
def _top_item_embeddings(model: DGIModel, params, hidden, mask, first_layer: int):
  return model.apply({"params": params}, hidden, mask, first_layer,
                     method=DGIModel.embed_items_from_bottom)


def encode_bottom_rows(model: DGIModel, params, tokens: np.ndarray, num_layers: int,
                       batch_size: int, dtype, desc: str = "encoder cache",
                       show_progress: bool = False):
  """`encoder_bottom` of token rows int32 [R, L] in `request_batches` (shortest first,
  trimmed) -> (hidden `dtype` [R, L, d], mask bool [R, L]), zeros past a batch's width."""
  num_rows, width = tokens.shape
  hidden = np.zeros((num_rows, width, model.cfg.d_model), dtype)
  masks = np.zeros((num_rows, width), bool)
  for rows, used, padded in _fixed_row_batches(model.cfg, tokens, batch_size, desc,
                                               show_progress):
    x, m = jax.device_get(_bottom(model, params, padded, num_layers))
    hidden[rows, :used] = x[:len(rows)].astype(dtype)
    masks[rows, :used] = m[:len(rows)]
  return hidden, masks


def build_bottom(model: DGIModel, params, run_data: run_setup.RunData, config,
                 request_tokens: np.ndarray, show_progress: bool = True) -> BottomCache:
  """Runs the frozen bottom (`frozen_bottom_layers`) over the catalogue and every
  training request under `params`, both shortest first at the width each batch needs.
  `request_tokens` [R, L]: `training_request_tokens`, the rows the key hashed."""
  dtype = jnp.dtype(config.train.encoder_cache_dtype)
  num_layers = frozen_bottom_layers(model, config)
  batch_size = request_batch_size(config)
  items = encode_bottom_rows(model, params, run_data.catalogue_tokens, num_layers,
                             batch_size, dtype, "encoder cache: items", show_progress)
  requests = encode_bottom_rows(model, params, request_tokens, num_layers, batch_size, dtype,
                                "encoder cache: requests", show_progress)
  return BottomCache(num_layers, *items, *requests)


# The ModelConfig fields an encoder's forward pass reads (dropout and history items rule a
# cache out altogether: `encoder_is_constant`, `frozen_bottom_layers`).
_ENCODER_FIELDS = ("encoder", "encoder_spec", "vocab_size", "max_len", "d_model",
                   "num_heads", "mlp_dim", "encoder_layers", "dtype",
                   "separate_item_encoder", "normalize_item_embedding")


def fingerprint(kind: str, model: DGIModel, params, config, item_tokens: np.ndarray,
                request_tokens: np.ndarray) -> str:
  """A digest of everything a cache of `kind` ('outputs': `EncoderCache`, 'bottom':
  `BottomCache`) is a function of: the encoder's frozen parameters (paths, dtypes, shapes,
  values), its architecture, the frozen layer count, the cache dtype and batch sizes, and
  the item tokens int32 [N, Li] and request tokens int32 [R, Lq] it encodes.

  Parameters that train do not enter: a cache reads only frozen ones.
  """
  digest = hashlib.blake2b(digest_size=20)
  static = (kind, frozen_bottom_layers(model, config) if kind == "bottom" else None,
            str(jnp.dtype(config.train.encoder_cache_dtype)), request_batch_size(config),
            int(config.eval.item_batch_size),
            tuple(getattr(model.cfg, name) for name in _ENCODER_FIELDS))
  digest.update(repr(static).encode())
  labels = optim.param_labels(params, config.optim)
  for name in encoders.ENCODER_COLLECTIONS:
    if name not in params:
      continue
    leaves = jax.tree_util.tree_leaves_with_path(params[name])
    for (path, leaf), label in zip(leaves, jax.tree.leaves(labels[name])):
      if label == "frozen":
        value = np.asarray(jax.device_get(leaf))
        digest.update(f"{name}{jax.tree_util.keystr(path)} {value.dtype} "
                      f"{value.shape}".encode())
        digest.update(np.ascontiguousarray(value).tobytes())
  for tokens in (item_tokens, request_tokens):
    digest.update(f"{tokens.dtype} {tokens.shape}".encode())
    digest.update(np.ascontiguousarray(tokens).tobytes())
  return digest.hexdigest()


# The last cache built in this process, by `fingerprint`, at most one: the benchmark trains
# its methods one after another from one pre-trained encoder, so that most of them need
# the same cache (Beauty's bottom cache: about 20 minutes to build on 2 CPU cores, 6.3 GiB).
_held: Dict[str, Union[EncoderCache, BottomCache]] = {}


def take_held(key: str) -> Optional[Union[EncoderCache, BottomCache]]:
  """The held cache if it has fingerprint `key`; otherwise releases it (before a new one
  is sized against the free memory and built) and returns None."""
  if key in _held:
    return _held[key]
  release_held()
  return None


def hold(key: str, cache: Union[EncoderCache, BottomCache]) -> None:
  """Keeps `cache` for a later run in this process (`take_held`), in place of any other."""
  _held.clear()
  _held[key] = cache


def release_held() -> None:
  """Frees the held cache's host memory (if nothing else refers to it)."""
  _held.clear()


# ---------------------------------------------------------------------------- on disk

_CACHE_KINDS = {cls.__name__: cls for cls in (EncoderCache, BottomCache)}
_DESCRIPTION = "cache.json"  # Written last in a cache's folder: the folder is complete.
_FINGERPRINT = re.compile(r"[0-9a-f]{40}")  # `fingerprint`'s hex digest: a cache folder.


def save(cache: Union[EncoderCache, BottomCache], directory, key: str) -> pathlib.Path:
  """Writes `cache` to <directory>/<key> (`key`: its `fingerprint`) and removes the other
  caches there, so that the folder holds one, as the process does.

  Each array is a .npy file, stored as unsigned integers of its width (numpy has no
  bfloat16) with its dtype named in cache.json. The folder is written under a temporary
  name and renamed (`atomic_write.atomic_directory`), so a cache folder is complete or
  absent.
  """
  final = pathlib.Path(directory) / key
  if not final.is_dir():
    with atomic_write.atomic_directory(final) as partial:
      _write_arrays(cache, partial)
  for other in final.parent.iterdir():
    # Only this module's folders: other caches, and the partial ones of killed writes.
    ours = _FINGERPRINT.fullmatch(other.name) or (other.name.startswith(".") and
                                                  _FINGERPRINT.match(other.name[1:]))
    if other != final and other.is_dir() and ours:
      shutil.rmtree(other, ignore_errors=True)
  return final


def _write_arrays(cache: Union[EncoderCache, BottomCache], folder: pathlib.Path) -> None:
  """One .npy file per array field of `cache` in `folder`, then cache.json."""
  arrays, scalars = {}, {}
  for field in dataclasses.fields(cache):
    value = getattr(cache, field.name)
    if isinstance(value, np.ndarray):
      np.save(folder / f"{field.name}.npy", value.view(f"u{value.dtype.itemsize}"))
      arrays[field.name] = value.dtype.name
    else:
      scalars[field.name] = value
  description = {"kind": type(cache).__name__, "arrays": arrays, "scalars": scalars}
  (folder / _DESCRIPTION).write_text(json.dumps(description), encoding="utf-8")


def load(directory, key: str) -> Optional[Union[EncoderCache, BottomCache]]:
  """The cache saved under fingerprint `key` in `directory`, its arrays memory-mapped
  read-only (a batch's rows are read as it is filled); None if there is none."""
  path = pathlib.Path(directory) / key
  if not (path / _DESCRIPTION).is_file():
    return None
  description = json.loads((path / _DESCRIPTION).read_text(encoding="utf-8"))
  fields = dict(description["scalars"])
  for name, dtype in description["arrays"].items():
    fields[name] = np.load(path / f"{name}.npy", mmap_mode="r").view(jnp.dtype(dtype))
  return _CACHE_KINDS[description["kind"]](**fields)


"""Serving a trained DGI model: the offline index and the online constrained search.

Offline (DGI_METHOD.md, "Inference"): every catalogue item is embedded (`z_base`) and
hard-quantized into its SID; the SIDs give the prefix tables that constrain decoding and
the inverted index SID -> items; the l2-normalised embeddings are cached for the cosine
re-rank inside a SID bucket.

Online: `Retriever.search` encodes a batch of requests, runs the beam search over the
SIDs that exist, and ranks the items of the returned SIDs (`eval.ranking`: by beam score
then cosine, the paper's order, or by cosine, or a blend of either the beam score or the
decoder's log-probability of each item's whole SID with the cosine;
`decoding.rank_items`).

Items added after training (`add_items`) are embedded and quantized with the trained
encoder and codebooks, without retraining; both index structures are rebuilt from the
extended SID array (see `index.py`, "Adding items").
"""

import functools
import json
import pathlib
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from dgi_jax import atomic_write
from dgi_jax import decoding
from dgi_jax import index as index_lib
from dgi_jax import popularity
from dgi_jax import run_setup
from dgi_jax import sharding
from dgi_jax.data import jsonl_format
from dgi_jax.data import pipeline
from dgi_jax.data import records
from dgi_jax.models import quantizer
from dgi_jax.models.dgi import DGIModel, EncodedRequests


class ItemError(ValueError):
  """An item id that is unknown (search history) or already taken (added items)."""


@flax.struct.dataclass
class SearchResult:
  """Top-k items of a batch of requests, best first (-1 / -inf at padding)."""
  items: jax.Array  # [B, k] int32 item indices.
  beam_scores: jax.Array  # [B, k] float32 log P(SID of the item | request).
  cosines: jax.Array  # [B, k] float32 z^_q . z^_item.
  beams: decoding.BeamResult  # The SIDs the search produced ([B, beam, m]).


# The model is a static argument: a linen module is a hashable dataclass of its config,
# so every Retriever of the same model shares one compilation per shape (validation
# builds a new Retriever each time).
@functools.partial(jax.jit, static_argnums=0)
def _embed_and_quantize(model: DGIModel, params, item_tokens: jax.Array):
  """Item tokens [n, L] -> (z_base [n, d], hard SIDs [n, m])."""
  apply = functools.partial(model.apply, {"params": params})
  z_base = apply(item_tokens, method=DGIModel.embed_items)
  return z_base, apply(z_base, method=DGIModel.hard_codes)


@functools.partial(jax.jit, static_argnums=0)
def _quantize(model: DGIModel, params, z_base: jax.Array):
  """Item embeddings z_base [n, d] -> hard SIDs [n, m]."""
  return model.apply({"params": params}, z_base, method=DGIModel.hard_codes)


# Candidates per request that one decoder pass of the 'sid' ranking scores: with a batch
# of 64 requests, 64 * 128 * m decoder positions a pass.
SID_SCORE_CHUNK = 128


def grouped_logits_fn(apply, request, batch: int, beam_size: int
                      ) -> decoding.TokensToLogits:
  """The beam search's `tokens_to_logits` for `request` (`encode_requests`' output for
  `batch` requests), with `apply` = `model.apply` bound to the params.

  The beams of a request go to `DGIModel.prefix_logits` as one group of prefixes
  [batch, beam, t] over the request's un-repeated states, so the decoder projects each
  request's states to cross-attention keys and values once, not once per beam (repeating
  the states per beam, `decoding.expand_to_beams`, gives the same logits at beam times
  those FLOPs). Row b * beam + j of the prefixes and logits is beam j of request b.
  """
  def tokens_to_logits(level, prefix):
    del level  # prefix_logits reads the level off the prefix length.
    grouped = prefix.reshape(batch, beam_size, prefix.shape[-1])
    logits = apply(request.z_q, request.states, request.mask, grouped,
                   method=DGIModel.prefix_logits)  # [batch, beam, K_level]
    return logits.reshape(batch * beam_size, logits.shape[-1])
  return tokens_to_logits


def sid_log_prob_fn(apply, request, inverted: index_lib.InvertedIndex,
                    chunk: int = SID_SCORE_CHUNK) -> Callable[[jax.Array], jax.Array]:
  """`decoding.rank_items`' `sid_log_prob` for `request`: candidate items int [B, C] ->
  float32 [B, C] log P(item's SID | request) (`DGIModel.sid_log_probs` summed over the
  levels), at most `chunk` candidates of every request per decoder pass (`lax.map`), so that
  memory stays O(B * chunk) however many items the beams' prefixes hold."""
  def log_prob(items):
    batch, width = items.shape
    # The fewest passes of at most `chunk`, evened out so that padding stays under one
    # per pass (a depth of 100 is one pass of 100, not of 128).
    passes = -(-width // chunk)
    step = -(-width // passes)
    padded = passes * step
    # The padding scores item 0, cut off below.
    items = jnp.pad(items, ((0, 0), (0, padded - width)))
    chunks = items.reshape(batch, padded // step, step).transpose(1, 0, 2)
    def score(chunk_items):  # [B, step] -> [B, step]
      sids = inverted.leaf_sids[inverted.item_leaf[chunk_items]]  # [B, step, m]
      return apply(request.z_q, request.states, request.mask, sids,
                   method=DGIModel.sid_log_probs).sum(axis=-1)
    scores = jax.lax.map(score, chunks)  # [C' / step, B, step]
    return scores.transpose(1, 0, 2).reshape(batch, padded)[:, :width]
  return log_prob


# The cosine weight and the item prior are traced: a validation sweep over their weights
# reuses one compilation.
_BEAM_STATIC = ("model", "beam_size", "bucket_cap", "candidate_level", "candidate_budget")
_RANK_STATIC = ("model", "k", "bucket_cap", "ranking", "candidate_level", "sid_rerank_depth")
_SEARCH_STATIC = tuple(dict.fromkeys(_BEAM_STATIC + _RANK_STATIC))


def _search_beams(model: DGIModel, params, tables: index_lib.PrefixTables,
                  inverted: index_lib.InvertedIndex, request: EncodedRequests, *,
                  beam_size: int, bucket_cap: int, candidate_level: int,
                  candidate_budget: int = 0) -> decoding.BeamResult:
  """Constrained beam search from encoded requests -> the beams (with candidate_level t,
  the best t-code prefixes; with a `candidate_budget`, only the fewest best beams that
  hold that many items)."""
  apply = functools.partial(model.apply, {"params": params})
  batch = request.z_q.shape[0]
  beams = decoding.beam_search(grouped_logits_fn(apply, request, batch, beam_size), batch,
                               beam_size, tables, model.cfg.codebook_sizes,
                               levels=candidate_level)
  if candidate_budget:
    beams = decoding.keep_within_budget(beams, inverted, candidate_budget, candidate_level,
                                        bucket_cap)
  return beams


def _rank_beams(model: DGIModel, params, inverted: index_lib.InvertedIndex,
                item_emb: jax.Array, request: EncodedRequests, beams: decoding.BeamResult,
                exclude, *, k: int, bucket_cap: int, ranking: str, cosine_weight: float,
                candidate_level: int, sid_rerank_depth: int = 0,
                item_prior=None) -> SearchResult:
  """The ranking of the beams' items (without those of `exclude`, int [B, E] -1 padded,
  when given; each cosine plus its item's `item_prior`, float32 [N], when given)."""
  apply = functools.partial(model.apply, {"params": params})
  items, beam_scores, cosines = decoding.rank_items(
      beams, inverted, quantizer.l2_normalize(request.z_q), item_emb, k, bucket_cap,
      ranking, cosine_weight, exclude=exclude, candidate_level=candidate_level,
      sid_log_prob=sid_log_prob_fn(apply, request, inverted) if ranking == "sid" else None,
      sid_rerank_depth=sid_rerank_depth, item_prior=item_prior)
  return SearchResult(items=items, beam_scores=beam_scores, cosines=cosines,
                      beams=beams)


def _search_requests(model: DGIModel, params, tables: index_lib.PrefixTables,
                     inverted: index_lib.InvertedIndex, item_emb: jax.Array,
                     request: EncodedRequests, exclude, *, beam_size: int, k: int,
                     bucket_cap: int, ranking: str, cosine_weight: float,
                     candidate_level: int, sid_rerank_depth: int = 0,
                     candidate_budget: int = 0, item_prior=None) -> SearchResult:
  """`_search_beams`, then `_rank_beams`."""
  beams = _search_beams(model, params, tables, inverted, request, beam_size=beam_size,
                        bucket_cap=bucket_cap, candidate_level=candidate_level,
                        candidate_budget=candidate_budget)
  return _rank_beams(model, params, inverted, item_emb, request, beams, exclude, k=k,
                     bucket_cap=bucket_cap, ranking=ranking, cosine_weight=cosine_weight,
                     candidate_level=candidate_level, sid_rerank_depth=sid_rerank_depth,
                     item_prior=item_prior)


# Evaluation's halves (it encodes requests once for the search and the diagnostics, and a
# validation sweep ranks one search's beams at every weight).
_search_beams_jit = jax.jit(_search_beams, static_argnames=_BEAM_STATIC)
_rank_beams_jit = jax.jit(_rank_beams, static_argnames=_RANK_STATIC)


@functools.partial(jax.jit, static_argnames=_SEARCH_STATIC)
def _search(model: DGIModel, params, tables: index_lib.PrefixTables,
            inverted: index_lib.InvertedIndex, item_emb: jax.Array,
            query_tokens: jax.Array, history, history_table, exclude=None,
            **options) -> SearchResult:
  """Encode requests -> constrained beam search -> ranking, as one jitted call
  (`options`: `_search_requests`' keyword arguments)."""
  request = run_setup.encode_requests(model, params, query_tokens, history,
                                       history_table)
  return _search_requests(model, params, tables, inverted, item_emb, request, exclude,
                          **options)


# Narrowest request width a search batch is trimmed to (but for an empty part): with
# powers of two above it, a handful of shapes, hence compilations, per batch size.
MIN_REQUEST_WIDTH = 8


def bucket_width(needed: int, full: int, allow_zero: bool = True,
                 multiple_of: Optional[int] = None) -> int:
  """Width a request part is trimmed to when its batch needs `needed` of `full` columns:
  the smallest power of two >= max(needed, MIN_REQUEST_WIDTH), or with `multiple_of` the
  smallest multiple of it >= needed (finer buckets, more shapes), capped at `full`; 0
  when none is needed and `allow_zero`."""
  if needed == 0 and allow_zero:
    return 0
  if multiple_of:
    return min(full, max(multiple_of, -(-needed // multiple_of) * multiple_of))
  return min(full, max(MIN_REQUEST_WIDTH, 1 << max(needed - 1, 0).bit_length()))


def trim_requests(query_tokens: np.ndarray, history, pad_id: int, trim_query: bool = True,
                  empty_query: bool = True, multiple_of: Optional[int] = None):
  """A search batch cut to the width its longest request needs, bucketed.

  Args:
    query_tokens: int [B, Lq], right-padded with `pad_id`.
    history: int [B, H] history item indices, right-padded with -1, or None (history as
      text, or none).
    pad_id: The encoder's padding token id.
    trim_query: Whether the token columns may be cut (not with a T5 encoder: its
      relative position bias spans the tokens and the history items appended after
      them, so cutting query padding moves the items).
    empty_query: Whether the token columns may all go when every query is padding
      (not for an encoder that may pool its first position, BERT's 'cls').
    multiple_of: `bucket_width`'s buckets: powers of two (None) or multiples of this.

  Returns:
    (query_tokens [B, Lq'], history [B, H'] or None), Lq' and H' by `bucket_width`.

  Only trailing columns that are padding in every request go. The encoders mask padding
  out of attention (exactly zero weight) and pooling, and place history items after the
  tokens with no position of their own beyond their recency (models/history.py); the
  decoder masks padding out of its cross-attention. So the scores are the untrimmed ones
  up to float rounding. Not so for a request with no real position at all (its
  all-masked attention averages over every column): a batch holding one is not trimmed.
  """
  real_tokens = query_tokens != pad_id
  real = real_tokens.any(axis=1)
  if history is not None:
    real_items = history >= 0
    real = real | real_items.any(axis=1)
  if not real.all():
    return query_tokens, history

  def width(real_columns: np.ndarray, allow_zero: bool) -> int:  # bool [B, W] -> width.
    used = np.flatnonzero(real_columns.any(axis=0))
    needed = int(used[-1]) + 1 if used.size else 0
    return bucket_width(needed, real_columns.shape[1], allow_zero, multiple_of)

  if trim_query:
    query_tokens = query_tokens[:, :width(real_tokens, empty_query)]
  if history is not None:
    history = history[:, :width(real_items, True)]
  return query_tokens, history


def trim_for_encoder(cfg, query_tokens: np.ndarray, history=None,
                     multiple_of: Optional[int] = None):
  """`trim_requests` under the rules of `cfg`'s encoder (a `ModelConfig`): the query
  tokens keep their width with a T5 encoder, and may go down to none only with the
  scratch encoder (a pre-trained one may pool its first position, 'cls')."""
  return trim_requests(query_tokens, history, cfg.pad_token_id,
                       trim_query=cfg.encoder != "t5", empty_query=cfg.encoder == "scratch",
                       multiple_of=multiple_of)


class Retriever:
  """A trained model's index over a catalogue, and the search over it.

  Attributes:
    item_ids: Item id of each item index (catalogue order, then added items).
    item_texts: Text of each item index.
    sids: int32 [N, m] hard SID of each item.
    item_embeddings: float32 [N, d] l2-normalised z_base (the cosine re-rank's vectors).
    item_norms: float32 [N] norms of the raw z_base (for hubness checks).
    item_log_popularity: float32 [N] ln(1 + the item's training popularity); 0 for items
      added after training (the popularity prior's, `popularity.py`).
    tables, inverted_index: The structures `search` runs on.
    stats: `index.collision_stats` of the current SIDs.
  """

  def __init__(self, model: DGIModel, params, run_data: run_setup.RunData, config,
               item_embeddings: Optional[np.ndarray] = None):
    """Indexes the catalogue of `run_data` with `params`.

    Args:
      model: The DGI model.
      params: Its trained parameters (host or device arrays).
      run_data: The run's dataset, tokenizer and catalogue tokens.
      config: The full config (`data` layouts and the `eval` section).
      item_embeddings: float32 [N, d], z_base of the catalogue under `params` when it
        is already known (a frozen encoder's cache, `encoder_cache.py`): the index then
        only quantizes it instead of running the item encoder again.
    """
    self.model = model
    # Training leaves the params replicated over the whole mesh.
    self._device = jax.local_devices()[0]
    self.params = sharding.to_local_device(params)
    self.tokenizer = run_data.tokenizer
    self._data_config = config.data
    self._item_batch_size = int(config.eval.item_batch_size)
    self._bucket_cap = int(config.eval.bucket_cap)
    self.ranking = str(config.eval.ranking)
    self.cosine_weight = float(config.eval.cosine_weight)
    # The popularity prior's weight in every cosine order (`popularity.py`; 0: none).
    self.popularity_weight = float(config.eval.popularity_weight)
    # 'sid' scores the candidates of highest cosine only, this many (0: all of them).
    self.sid_rerank_depth = int(config.eval.sid_rerank_depth)
    # Search prefixes of `candidate_level` codes and rank every item under them (0: the
    # items of the beams' SIDs).
    self.candidate_level = int(config.eval.candidate_level)
    # Rank the items of the fewest best beams that hold this many (0: every beam's).
    self.candidate_budget = int(config.eval.candidate_budget)
    # Leave each request's history items out of its ranking (`eval.exclude_history`).
    self.exclude_history = bool(config.eval.exclude_history)
    # Cut each search batch to its longest request (`trim_requests`); False searches at
    # the full request width.
    self.trim_padding = True
    self.item_ids: List[str] = []
    self.item_texts: List[str] = []
    self._index_of: Dict[str, int] = {}
    num_levels = model.cfg.num_levels
    self.sids = np.zeros((0, num_levels), np.int32)
    self.item_embeddings = np.zeros((0, model.cfg.d_model), np.float32)
    self.item_norms = np.zeros((0,), np.float32)
    self.item_log_popularity = np.zeros((0,), np.float32)
    self._item_prior = None  # ((weight, N), the device array of `item_prior`).
    self._append(run_data.dataset.item_ids, run_data.dataset.item_texts,
                 run_data.catalogue_tokens, item_embeddings,
                 popularity.log_popularity(run_data.dataset.train_popularity))

  # ------------------------------------------------------------------ indexing
  @property
  def num_items(self) -> int:
    return len(self.item_ids)

  def quantize_tokens(self, item_tokens: np.ndarray):
    """Item tokens [n, L] -> (z_base float32 [n, d], SIDs int32 [n, m]), batched.

    Fixed-size batches (the last one zero-padded) keep to one compilation.
    """
    z_base, codes = run_setup.map_batches(
        functools.partial(_embed_and_quantize, self.model, self.params),
        np.asarray(item_tokens, np.int32), self._item_batch_size)
    return z_base.astype(np.float32), codes.astype(np.int32)

  def _append(self, ids: Sequence[str], texts: Sequence[str], item_tokens: np.ndarray,
              z_base: Optional[np.ndarray] = None,
              log_popularity: Optional[np.ndarray] = None) -> np.ndarray:
    """Indexes items by their tokens, or by their z_base [n, d] when given, with their
    ln(1 + training popularity) [n] (none given: 0, items no training request targets)."""
    if z_base is None:
      z_base, sids = self.quantize_tokens(item_tokens)
    else:
      z_base = np.asarray(z_base, np.float32)
      sids = run_setup.map_batches(functools.partial(_quantize, self.model, self.params),
                                   z_base, self._item_batch_size).astype(np.int32)
    start = self.num_items
    for offset, item_id in enumerate(ids):
      self._index_of[item_id] = start + offset
    self.item_ids.extend(ids)
    self.item_texts.extend(texts)
    self.sids = np.concatenate([self.sids, sids])
    norms = np.linalg.norm(z_base, axis=-1)
    self.item_norms = np.concatenate([self.item_norms, norms.astype(np.float32)])
    normalised = np.asarray(quantizer.l2_normalize(jnp.asarray(z_base)), np.float32)
    self.item_embeddings = np.concatenate([self.item_embeddings, normalised])
    if log_popularity is None:
      log_popularity = np.zeros(len(ids), np.float32)
    self.item_log_popularity = np.concatenate([self.item_log_popularity,
                                               np.asarray(log_popularity, np.float32)])
    # Rebuilt from scratch: node and leaf ids shift when SIDs are added.
    codebook_sizes = self.model.cfg.codebook_sizes
    self.tables = index_lib.build_prefix_tables(self.sids, codebook_sizes)
    self.inverted_index = index_lib.build_inverted_index(self.sids)
    self.stats = index_lib.collision_stats(self.sids, codebook_sizes)
    self._device_embeddings = jax.device_put(self.item_embeddings, self._device)
    self._device_history_table = (
        jax.device_put(self.sids if self.model.cfg.history_repr == "codes"
                       else self.item_embeddings, self._device)
        if self.model.cfg.history_items else None)
    return np.arange(start, self.num_items)

  @property
  def device_item_embeddings(self) -> jax.Array:
    """`item_embeddings` on the index's device."""
    return self._device_embeddings

  def item_prior(self) -> jax.Array:
    """float32 [N] on the index's device: each item's popularity prior at
    `self.popularity_weight`, the term every cosine order adds (`popularity.py`); kept
    until the weight or the catalogue changes."""
    key = (self.popularity_weight, self.num_items)
    if self._item_prior is None or self._item_prior[0] != key:
      prior = (self.popularity_weight * self.item_log_popularity).astype(np.float32)
      self._item_prior = (key, jax.device_put(prior, self._device))
    return self._item_prior[1]

  @property
  def history_table(self):
    """What requests read their history items through (models/history.py): the SIDs
    ('codes') or the l2-normalised embeddings ('embedding') of every indexed item, added
    items included; None when requests hold their history as text."""
    return self._device_history_table

  def add_items(self, texts: Sequence[str], ids: Sequence[str]) -> np.ndarray:
    """Indexes new items with the trained encoder and quantizer; returns their indices.

    Raises:
      ItemError: an id is empty, repeated or already indexed.
      ValueError: the lengths differ.
    """
    texts, ids = list(texts), list(ids)
    if len(texts) != len(ids):
      raise ValueError(f"{len(texts)} texts but {len(ids)} ids")
    if not ids:
      return np.zeros((0,), np.int64)
    seen = set()
    for item_id in ids:
      if not item_id or item_id in self._index_of or item_id in seen:
        raise ItemError(f"item id {item_id!r} is empty, repeated or already indexed")
      seen.add(item_id)
    tokens = self.tokenizer.encode_items(texts, self._data_config.max_item_len)
    return self._append(ids, texts, tokens)

  def index_of(self, item_id: str) -> int:
    """Item index of an item id (raises `ItemError`)."""
    if item_id not in self._index_of:
      raise ItemError(f"unknown item id {item_id!r}")
    return self._index_of[item_id]

  # ------------------------------------------------------------------ search
  def history_args(self, history):
    """(history [B, H] on the device, the history table): the history arguments of
    `DGIModel.encode_requests` for this index, or (None, None) when the model reads its
    history as text."""
    if not self.model.cfg.history_items:
      return None, None
    if history is None:
      raise ValueError(f"data.history_repr={self.model.cfg.history_repr!r}: the search "
                       "needs the requests' history item indices")
    return jnp.asarray(history, jnp.int32), self._device_history_table

  def search_inputs(self, query_tokens, history=None):
    """The request arrays `search` runs on: (query tokens int32 [B, Lq'], then the
    history arguments of `history_args`), on the device.

    With `trim_padding` they are cut to the width the batch's longest request needs
    (`trim_for_encoder`: the same results up to float rounding), since most positions of
    a request are usually padding and the encoder's and the decoder's cross-attention
    cost grows with the width.
    """
    cfg = self.model.cfg
    query_tokens = np.asarray(query_tokens, np.int32)
    history = (np.asarray(history, np.int32)
               if cfg.history_items and history is not None else None)
    if self.trim_padding:
      query_tokens, history = trim_for_encoder(cfg, query_tokens, history)
    return (jnp.asarray(query_tokens), *self.history_args(history))

  def search(self, query_tokens, beam_size: int, k: int, history=None) -> SearchResult:
    """Top-k items of request tokens [B, Lq] and history item indices [B, H] (-1 padded,
    oldest first; read unless the history is text), in `self.ranking`'s order, without
    the history items when `self.exclude_history`. Jitted: one compilation per B,
    request width (`search_inputs`), index and ranking."""
    return _search(self.model, self.params, self.tables, self.inverted_index,
                   self._device_embeddings, *self.search_inputs(query_tokens, history),
                   self.excluded_items(history), **self._search_options(beam_size, k))

  def _search_options(self, beam_size: int, k: int) -> dict:
    """The keyword arguments of `_search` (all but the cosine weight and the item prior
    static, `_SEARCH_STATIC`)."""
    return dict(self._beam_options(beam_size), **self._rank_options(k))

  def _beam_options(self, beam_size: int) -> dict:
    return dict(beam_size=int(beam_size), bucket_cap=self._bucket_cap,
                candidate_level=self.candidate_level, candidate_budget=self.candidate_budget)

  def _rank_options(self, k: int) -> dict:
    return dict(k=int(k), bucket_cap=self._bucket_cap, ranking=self.ranking,
                cosine_weight=self.cosine_weight, candidate_level=self.candidate_level,
                sid_rerank_depth=self.sid_rerank_depth, item_prior=self.item_prior())

  def encode(self, query_tokens, history=None) -> EncodedRequests:
    """The requests of `search(query_tokens, ..., history)`, encoded as it encodes them
    (trimmed by `search_inputs`), for `search_beams`, `rank_beams` and the diagnostics."""
    return run_setup.encode_requests(self.model, self.params,
                                     *self.search_inputs(query_tokens, history))

  def search_beams(self, request: EncodedRequests, beam_size: int) -> decoding.BeamResult:
    """The beams `search` ranks, of requests encoded by `encode`. They depend on neither
    search weight, so a sweep over the cosine or popularity weight searches once and
    ranks per weight (`rank_beams` of these beams is `search`'s result)."""
    return _search_beams_jit(self.model, self.params, self.tables, self.inverted_index,
                             request, **self._beam_options(beam_size))

  def rank_beams(self, request: EncodedRequests, beams: decoding.BeamResult, k: int,
                 history=None) -> SearchResult:
    """The top-k items under `beams` (of `search_beams` on the same requests; `history`
    [B, H] their history, for `exclude_history`) in `self.ranking`'s order at the current
    weights."""
    return _rank_beams_jit(self.model, self.params, self.inverted_index,
                           self._device_embeddings, request, beams,
                           self.excluded_items(history), **self._rank_options(k))

  def candidate_counts(self, beams: decoding.BeamResult) -> np.ndarray:
    """int [B]: how many items the ranking scored for each request of a `search` result's
    `beams` (the items under its whole SIDs, or under its prefixes with a candidate
    level; at most `eval.bucket_cap` per node), before history items are left out."""
    nodes = np.where(np.asarray(beams.valid), np.asarray(beams.leaf_nodes), -1)
    return index_lib.candidate_counts(self.inverted_index, nodes, self.candidate_level,
                                      self._bucket_cap)

  def under_beams(self, beams: decoding.BeamResult, items) -> np.ndarray:
    """bool [B, R]: whether each of `items` [B, R] (-1 padded: False) is among the
    candidates of its request's `beams`, i.e. its SID starts with one of the beams'
    `candidate_level`-code prefixes (whole SIDs at level 0) — whatever the ranking then
    does with it (a `bucket_cap` may still drop it)."""
    items = np.asarray(items)
    level = self.candidate_level or self.sids.shape[1]
    prefixes = np.asarray(beams.sequences)[:, :, :level]  # [B, beam, t]
    item_prefixes = self.sids[np.maximum(items, 0), :level]  # [B, R, t]
    match = np.all(item_prefixes[:, :, None, :] == prefixes[:, None, :, :], axis=-1)
    match &= np.asarray(beams.valid)[:, None, :]
    return match.any(axis=-1) & (items >= 0)

  def excluded_items(self, history):
    """The items left out of the requests' rankings: history [B, H] on the device when
    `self.exclude_history` (whatever the history's representation), else None."""
    if not self.exclude_history or history is None:
      return None
    return jnp.asarray(history, jnp.int32)

  def tokenize_requests(self, queries: Sequence[str], histories: Sequence[Sequence[str]]
                      ) -> Tuple[np.ndarray, np.ndarray]:
    """Requests of query texts and histories of item ids (oldest first) -> (request
    tokens int32 [B, max_query_len], history item indices int32 [B, max_history]).

    With history_repr 'text' the tokens hold the newest titles, from the catalogue
    truncated to `max_item_len` as in training; otherwise the query alone, and the model
    reads the item indices (the most recent `max_history`, -1 padded).

    Raises:
      ItemError: a history id is not in the index.
    """
    data = self._data_config
    if len(queries) != len(histories):
      raise ValueError(f"{len(queries)} queries but {len(histories)} histories")
    indices = [[self.index_of(i) for i in h] for h in histories]
    as_text = not self.model.cfg.history_items
    history_texts = [[self.item_texts[i] for i in h] if as_text else [] for h in indices]
    tokens = self.tokenizer.encode_requests(list(queries), history_texts,
                                            data.max_query_len, data.max_history,
                                            max_title_len=data.max_item_len)
    recent = [records.recent_history(h, data.max_history) for h in indices]
    return tokens, pipeline.pad_rows(recent, data.max_history)

  def search_text(self, query: str, history: Sequence[str] = (), beam_size: int = 10,
                  k: int = 10) -> List[Dict[str, object]]:
    """Top-k items of one request as dicts: rank, item_id, text, sid, beam_score, cosine."""
    tokens, history_indices = self.tokenize_requests([query], [history])
    result = jax.device_get(self.search(tokens, beam_size, k, history_indices))
    hits = []
    for rank, (item, score, cosine) in enumerate(zip(result.items[0],
                                                     result.beam_scores[0],
                                                     result.cosines[0]), start=1):
      if item < 0:
        break
      hits.append({"rank": rank, "item_id": self.item_ids[item],
                   "text": self.item_texts[item], "sid": self.sids[item].tolist(),
                   "beam_score": float(score), "cosine": float(cosine)})
    return hits


def write_sid_table(path, item_ids: Sequence[str], sids) -> pathlib.Path:
  """Writes `{"item_id": ..., "sid": [c_1, .., c_m]}` lines atomically (temp + rename)."""
  path = pathlib.Path(path)
  sids = np.asarray(sids)
  if len(item_ids) != len(sids):
    raise ValueError(f"{len(item_ids)} item ids but {len(sids)} SIDs")
  return atomic_write.write_text(path, "".join(
      json.dumps({"item_id": item_id, "sid": sid}, ensure_ascii=False) + "\n"
      for item_id, sid in zip(item_ids, sids.tolist())))


def read_items_file(path) -> List[records.Item]:
  """Items of a file in the `items.jsonl` format (`{"item_id", "text"}` per line).

  Raises:
    jsonl_format.DatasetFormatError: naming the file, line and field of a bad record.
  """
  # The dataset reader's own item parser, so new items obey the same rules and errors.
  return jsonl_format.read_items(pathlib.Path(path))


def read_sid_table(path) -> Dict[str, List[int]]:
  """Reads a `write_sid_table` file back: item id -> SID."""
  with open(path, encoding="utf-8") as f:
    rows = [json.loads(line) for line in f if line.strip()]
  return {row["item_id"]: row["sid"] for row in rows}


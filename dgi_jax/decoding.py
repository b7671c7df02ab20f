"""Constrained beam search over existing SIDs, and lexicographic ranking of their items.

Every SID has exactly m codes, so there is no end-of-sequence token and no separate set of
finished hypotheses: the search runs m steps, one per level, as a static Python loop
(codebook sizes differ per level, hence so do the logit shapes). At each step the model
scores the next code of every live prefix, the log-softmax is taken over the whole
codebook and only then are codes that lead to no existing SID set to -inf, so beam
scores are true model log-probabilities log P(c_1..c_t | q, H).

Usage under jit with the DGI model (the callback closes over traced parameters and
request features; `retrieval.grouped_logits_fn` is this callback):

  @jax.jit
  def search(params, tables, request):  # request: DGIModel.encode_requests' output
    batch = request.z_q.shape[0]
    def tokens_to_logits(level, prefix):  # prefix: [batch * beam_size, level]
      # The beams of a request as one group [batch, beam_size, level]: they share the
      # request's states (the decoder projects them once per request, not per beam).
      logits = model.apply(params, request.z_q, request.states, request.mask,
                           prefix.reshape(batch, beam_size, level),
                           method=DGIModel.prefix_logits)
      return logits.reshape(batch * beam_size, -1)
    return beam_search(tokens_to_logits, batch, beam_size, tables, cfg.codebook_sizes)

Any `tokens_to_logits` with that contract works, e.g. one over features repeated per beam
with `expand_to_beams` (same logits, the request's states then cost beam times more).
"""

from typing import Callable, Optional, Sequence, Tuple

import flax.struct
import jax
import jax.numpy as jnp

from dgi_jax import index as index_lib
from dgi_jax.config_checks import RANKINGS, WEIGHTED_RANKINGS

NEG_INF = float("-inf")

# (level: static int, prefix [batch * beam, level] int32) -> logits [batch * beam, K_level].
TokensToLogits = Callable[[int, jax.Array], jax.Array]


@flax.struct.dataclass
class BeamState:
  """Live hypotheses after `level` codes (level is the static loop index)."""
  sequences: jax.Array  # [batch, beam, m] int32 codes; -1 beyond level and in dead beams.
  scores: jax.Array  # [batch, beam] float32 sum of log-probs; -inf in dead beams.
  nodes: jax.Array  # [batch, beam] int32 trie node at `level`; -1 in dead beams.
  alive: jax.Array  # [batch, beam] bool, the beam holds an existing prefix.


@flax.struct.dataclass
class BeamResult:
  """Search output, sorted by score descending; invalid beams (fewer existing SIDs than
  beams) come last with score -inf, sequences -1 and leaf -1."""
  sequences: jax.Array  # [batch, beam, m] int32 SIDs.
  scores: jax.Array  # [batch, beam] float32 log P(SID | q, H).
  # [batch, beam] int32 leaf ids (index into the inverted index); after a search of
  # fewer levels than m, the nodes of the length-`levels` prefixes.
  leaf_nodes: jax.Array
  valid: jax.Array  # [batch, beam] bool.


def expand_to_beams(x: jax.Array, beam_size: int) -> jax.Array:
  """[batch, ...] -> [batch * beam, ...], each row repeated for its beams (beam-minor)."""
  return jnp.repeat(x, beam_size, axis=0)


def init_state(batch_size: int, beam_size: int, num_levels: int) -> BeamState:
  """One live empty prefix (the root) per query; the other beams start dead so that the
  first step cannot produce the same hypothesis twice."""
  first = jnp.arange(beam_size) == 0
  return BeamState(
      sequences=jnp.full((batch_size, beam_size, num_levels), -1, jnp.int32),
      scores=jnp.broadcast_to(jnp.where(first, 0.0, NEG_INF).astype(jnp.float32),
                              (batch_size, beam_size)),
      nodes=jnp.broadcast_to(jnp.where(first, 0, -1).astype(jnp.int32),
                             (batch_size, beam_size)),
      alive=jnp.broadcast_to(first, (batch_size, beam_size)))


def beam_step(state: BeamState, level: int, logits: jax.Array,
              tables: index_lib.PrefixTables) -> BeamState:
  """Extends every beam by one code and keeps the best `beam` valid hypotheses.

  Args:
    state: hypotheses with `level` codes.
    level: static int, the level being decoded.
    logits: [batch * beam, K_level] model logits for the next code.
    tables: prefix tables of the existing SIDs.
  """
  batch, beam = state.scores.shape
  k = tables.codebook_sizes[level]
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1).reshape(batch, beam, k)
  allowed, child = index_lib.valid_next(tables, level, state.nodes)  # [batch, beam, K]
  allowed = allowed & state.alive[..., None]
  candidates = jnp.where(allowed, state.scores[..., None] + log_probs, NEG_INF)
  top_scores, flat = jax.lax.top_k(candidates.reshape(batch, beam * k), beam)
  parent = flat // k
  code = (flat % k).astype(jnp.int32)
  # The mask, not the score, decides validity: -inf model scores must not revive a beam.
  alive = jnp.take_along_axis(allowed.reshape(batch, beam * k), flat, axis=1)
  nodes = jnp.take_along_axis(child.reshape(batch, beam * k), flat, axis=1)
  sequences = jnp.take_along_axis(state.sequences, parent[..., None], axis=1)
  sequences = sequences.at[:, :, level].set(code)
  return BeamState(
      sequences=jnp.where(alive[..., None], sequences, -1),
      scores=jnp.where(alive, top_scores, NEG_INF),
      nodes=jnp.where(alive, nodes, -1),
      alive=alive)


def beam_search(tokens_to_logits: TokensToLogits, batch_size: int, beam_size: int,
                tables: index_lib.PrefixTables, codebook_sizes: Sequence[int],
                levels: int = 0) -> BeamResult:
  """Beam search restricted to the SIDs in `tables`; pure and jittable.

  Exact (returns the true top-`beam_size` SIDs) whenever `beam_size` is at least the
  number of existing prefixes at every level; otherwise the usual beam approximation, but
  every returned valid SID exists.

  Args:
    tokens_to_logits: see `TokensToLogits`; row b * beam_size + j is beam j of query b.
    batch_size: number of queries (static).
    beam_size: beams per query (static), 1..20 in the paper.
    tables: prefix tables (`index.build_prefix_tables`).
    codebook_sizes: K_1..K_m (static); must match the tables.
    levels: static; stop after this many codes (1..m; 0 = m): the result's sequences
      hold -1 past them and its `leaf_nodes` are the nodes of the length-`levels`
      prefixes, the best `beam_size` existing prefixes (`rank_items`' candidate_level).

  Returns:
    A `BeamResult` sorted by score, best first.
  """
  codebook_sizes = tuple(int(k) for k in codebook_sizes)
  if codebook_sizes != tables.codebook_sizes:
    raise ValueError(f"codebook_sizes {codebook_sizes} != tables {tables.codebook_sizes}")
  if beam_size < 1:
    raise ValueError(f"beam_size must be >= 1, got {beam_size}")
  num_levels = len(codebook_sizes)
  if not 0 <= levels <= num_levels:
    raise ValueError(f"levels={levels}: expected 0..{num_levels}")
  state = init_state(batch_size, beam_size, num_levels)
  for level in range(levels or num_levels):
    prefix = state.sequences[:, :, :level].reshape(batch_size * beam_size, level)
    # Dead beams carry -1 codes; hand the model a valid code, their scores are masked.
    logits = tokens_to_logits(level, jnp.maximum(prefix, 0))
    if logits.shape != (batch_size * beam_size, codebook_sizes[level]):
      raise ValueError(f"level {level}: logits {logits.shape}, expected "
                       f"{(batch_size * beam_size, codebook_sizes[level])}")
    state = beam_step(state, level, logits, tables)
  return BeamResult(sequences=state.sequences, scores=state.scores,
                    leaf_nodes=state.nodes, valid=state.alive)


def keep_within_budget(beams: BeamResult, inverted_index: index_lib.InvertedIndex,
                       budget: int, candidate_level: int = 0,
                       bucket_cap: int = 0) -> BeamResult:
  """`beams` cut to the fewest best that hold at least `budget` candidate items
  (`index.within_budget`; static budget >= 1); the beams cut become invalid beams (score
  -inf, sequences and node -1), so the ranking, its candidate counts and everything else
  that reads the beams see only the kept ones. Jittable."""
  nodes = jnp.where(beams.valid, beams.leaf_nodes, -1)
  keep = index_lib.within_budget(inverted_index, nodes, candidate_level, budget, bucket_cap)
  return BeamResult(sequences=jnp.where(keep[..., None], beams.sequences, -1),
                    scores=jnp.where(keep, beams.scores, NEG_INF),
                    leaf_nodes=jnp.where(keep, beams.leaf_nodes, -1), valid=keep)


# `rank_items` takes its cosines from one [batch, N] product with the whole catalogue
# when N is at most this many times the candidate slots per request (beam * cap).
CATALOGUE_COSINE_FACTOR = 16


def rank_items(beams: BeamResult, inverted_index: index_lib.InvertedIndex,
               query_emb: jax.Array, item_emb: jax.Array, k: int,
               bucket_cap: int = 0, ranking: str = "beam", cosine_weight: float = 0.0,
               cosines_from: str = "auto", exclude: Optional[jax.Array] = None,
               candidate_level: int = 0,
               sid_log_prob: Optional[Callable[[jax.Array], jax.Array]] = None,
               sid_rerank_depth: int = 0, item_prior: Optional[jax.Array] = None
               ) -> Tuple[jax.Array, jax.Array, jax.Array]:
  """Top-k items per query among the items of the beams' SIDs (or prefixes); jittable.

  Candidates are the items of every valid beam's bucket, padded to a fixed width so the
  shapes are static: memory is O(batch * beam * cap * d) for the gathered item vectors,
  with cap = `bucket_cap` or the index's largest bucket (no item dropped). An item has
  one SID, so the candidates are distinct. With `candidate_level` t in 1..m-1 the beams
  come from a search stopped after t codes (`beam_search(levels=t)`: the best distinct
  length-t prefixes) and the candidates are every item under them, a wider net when the
  decoder finds the right region of the index more often than the right SID; cap then
  defaults to the most items under one length-t prefix. Their order (`ranking`):
    'beam':   the paper's: beam score, then cosine inside a SID bucket (or prefix);
    'cosine': cosine z^_q . z^_item over the union of the beams' items (the beams only
              choose the candidates);
    'blend':  beam score + cosine_weight * cosine;
    'sid':    log P(the item's whole SID | request) + cosine_weight * cosine, from
              `sid_log_prob`: under a beam's prefix its items' SIDs differ, so the decoder
              orders them by their remaining codes, which 'blend' (one score per prefix)
              cannot. Without candidate_level it equals 'blend' (the beams are whole SIDs).
              With `sid_rerank_depth` R > 0 only the R (at least k) candidates of highest
              cosine are scored and ranked: the decoder reads R SIDs per request instead
              of one per candidate slot.
  All four cost O(batch * beam * cap), independent of the catalogue size ('sid' a decoder
  pass per candidate, the others a dot product). Items of
  `exclude` (the request's history with `eval.exclude_history`) are no candidates. With
  `item_prior` each candidate's cosine is ranked as cosine + its prior (the popularity
  prior, `popularity.py`) wherever the cosine orders, the returned cosines unchanged.

  The candidates' cosines (`cosines_from`, static): 'candidates' gathers their vectors,
  [batch, beam, cap, d], mostly padding when one bucket is much larger than the rest
  (cap is the largest bucket); 'catalogue' takes them from the product of the queries
  with all N item vectors, one matmul that reads the item matrix once per batch, much
  faster than that gather on a small catalogue (on Beauty's 12k items, cap 181, 1.5 ms
  against 45 ms per 64 requests on CPU); 'auto' is 'catalogue' when N <=
  CATALOGUE_COSINE_FACTOR * beam * cap, so the cost stays O(batch * beam * cap * d).
  The same cosines up to float rounding.

  Args:
    beams: output of `beam_search`.
    inverted_index: the SID -> items index built from the same SIDs as the tables.
    query_emb: [batch, d] l2-normalised query embeddings z^_q.
    item_emb: [N, d] l2-normalised item embeddings z^_item.
    k: number of items to return (static).
    bucket_cap: static bucket width, 0 = the largest bucket.
    ranking: 'beam', 'cosine', 'blend' or 'sid' (static).
    cosine_weight: float scalar, the cosine's weight in 'blend' and 'sid'.
    cosines_from: 'auto', 'candidates' or 'catalogue' (static), see above.
    exclude: int [batch, E] item indices left out of the ranking (-1 padded), or None.
    candidate_level: static; 0 (or m): the items of the beams' SIDs; t in 1..m-1: the
      items under the beams' length-t prefixes (beams of `beam_search(levels=t)`).
    sid_log_prob: for 'sid': candidate item indices int [batch, C] (padding slots hold
      item 0) -> float32 [batch, C] log P(item's SID | request).
    sid_rerank_depth: static; for 'sid', 0 (every candidate) or R.
    item_prior: float32 [N] added to each item's cosine in the ranking, or None.

  Returns:
    items: [batch, k] int32 item indices, -1 padded.
    item_beam_scores: [batch, k] float32 beam score of each item's SID, -inf at padding.
    cosines: [batch, k] float32 z^_q . z^_item, -inf at padding.
  """
  batch, beam = beams.scores.shape
  items, present = _candidates(beams, inverted_index, bucket_cap, candidate_level)
  cap = items.shape[-1]
  if exclude is not None:  # [batch, beam, cap, E] comparisons: E is a short history.
    # Padding (-1) in `exclude` matches only padding slots, which are absent already.
    present &= ~(items[..., None] == exclude[:, None, None, :]).any(-1)
  if cosines_from == "auto":
    cosines_from = ("catalogue" if item_emb.shape[0] <= CATALOGUE_COSINE_FACTOR * beam * cap
                    else "candidates")
  query_emb, safe_items = query_emb.astype(jnp.float32), jnp.maximum(items, 0)
  if cosines_from == "catalogue":
    every = query_emb @ item_emb.astype(jnp.float32).T  # [batch, N]
    cosines = jnp.take_along_axis(every, safe_items.reshape(batch, beam * cap),
                                  axis=1).reshape(items.shape)
  elif cosines_from == "candidates":
    vectors = item_emb[safe_items]  # [batch, beam, cap, d]
    cosines = jnp.einsum("bd,bwcd->bwc", query_emb, vectors.astype(jnp.float32))
  else:
    raise ValueError(f"cosines_from={cosines_from!r}: expected 'auto', 'candidates' or "
                     "'catalogue'")
  scores = jnp.broadcast_to(beams.scores[..., None], items.shape)
  # What the ranking orders by in the cosine's place.
  ranked_cosines = cosines if item_prior is None else cosines + item_prior[safe_items]
  flat = lambda x: x.reshape(batch, beam * cap)
  items, present, scores, cosines, ranked_cosines = map(
      flat, (items, present, scores, cosines, ranked_cosines))
  if ranking == "sid":
    if sid_log_prob is None:
      raise ValueError("ranking='sid' needs sid_log_prob")
    depth = max(sid_rerank_depth, k)
    if sid_rerank_depth and depth < items.shape[1]:  # The best `depth` by cosine.
      best = jnp.lexsort((-ranked_cosines, ~present), axis=-1)[:, :depth]
      keep = lambda x: jnp.take_along_axis(x, best, axis=1)
      items, present, scores, cosines, ranked_cosines = map(
          keep, (items, present, scores, cosines, ranked_cosines))
    ranked_by = sid_log_prob(jnp.maximum(items, 0))
  else:
    ranked_by = scores
  order = jnp.lexsort(_ranking_keys(ranking, cosine_weight, present, ranked_by,
                                    ranked_cosines), axis=-1)
  take = lambda x: jnp.take_along_axis(x, order[:, :k], axis=1)
  items, present, scores, cosines = map(take, (items, present, scores, cosines))
  pad = k - items.shape[1]
  if pad > 0:  # Fewer candidate slots than k.
    widen = lambda x, value: jnp.pad(x, ((0, 0), (0, pad)), constant_values=value)
    items, present = widen(items, -1), widen(present, False)
    scores, cosines = widen(scores, 0.0), widen(cosines, 0.0)
  return (jnp.where(present, items, -1),
          jnp.where(present, scores, NEG_INF),
          jnp.where(present, cosines, NEG_INF))


def _candidates(beams: BeamResult, inverted_index: index_lib.InvertedIndex,
                bucket_cap: int, candidate_level: int) -> Tuple[jax.Array, jax.Array]:
  """The beams' candidate items [batch, beam, cap] (-1 padded) and their validity."""
  nodes = jnp.where(beams.valid, beams.leaf_nodes, -1)  # [batch, beam]
  num_levels = inverted_index.num_levels
  if candidate_level in (0, num_levels):
    return index_lib.items_for_leaves(inverted_index, nodes, bucket_cap)
  if not 0 < candidate_level < num_levels:
    raise ValueError(f"candidate_level={candidate_level}: expected 0..{num_levels}")
  return index_lib.items_for_prefixes(inverted_index, nodes, candidate_level, bucket_cap)


def _ranking_keys(ranking: str, cosine_weight: float, present, scores, cosines):
  """lexsort keys (last is primary) of a ranking: present candidates first, then the
  ranking's order, best first."""
  scores = jnp.where(present, scores, 0.0)
  if ranking == "beam":
    keys = (-cosines, -scores)
  elif ranking == "cosine":
    keys = (-scores, -cosines)
  elif ranking in WEIGHTED_RANKINGS:  # scores: the beam's, or the item's SID's.
    keys = (-cosines, -(scores + cosine_weight * cosines))
  else:
    raise ValueError(f"ranking={ranking!r}: expected one of {RANKINGS}")
  return (*keys, ~present)

"""Constrained beam search and lexicographic ranking against enumeration."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dgi_jax import decoding
from dgi_jax import index

SIZES = (5, 4, 3)
NUM_BUCKETS = 101  # Rows of the toy model's logit tables.
BATCH = 3


def _toy_catalogue(num_items=20, seed=0):
  rng = np.random.default_rng(seed)
  return np.stack([rng.integers(0, k, num_items) for k in SIZES], axis=1)


def _toy_tables(seed=1):
  """Per level: a [NUM_BUCKETS, K] table read by a hash of the prefix, and a [BATCH, K]
  per-query offset, so that logits depend on both the prefix and the query."""
  rng = np.random.default_rng(seed)
  prefix_tables = [rng.normal(0, 2, (NUM_BUCKETS, k)).astype(np.float32) for k in SIZES]
  query_tables = [rng.normal(0, 2, (BATCH, k)).astype(np.float32) for k in SIZES]
  return prefix_tables, query_tables


def _prefix_hash(prefix, xp):
  h = xp.zeros(prefix.shape[0], dtype=xp.int32)
  for j in range(prefix.shape[1]):
    h = h * 7 + prefix[:, j] + 1
  return h % NUM_BUCKETS


def _toy_logits(prefix_tables, query_tables, beam_size, level, prefix):
  """tokens_to_logits of the toy model (jnp); row r belongs to query r // beam_size."""
  query = jnp.arange(prefix.shape[0]) // beam_size
  return (jnp.asarray(prefix_tables[level])[_prefix_hash(prefix, jnp)]
          + jnp.asarray(query_tables[level])[query])


def _enumerate(sids, prefix_tables, query_tables):
  """Exact log P(SID | query) of every distinct SID, [BATCH, U] float64, by numpy."""
  unique = np.unique(sids, axis=0)
  scores = np.zeros((BATCH, len(unique)))
  for level in range(len(SIZES)):
    rows = prefix_tables[level][_prefix_hash(unique[:, :level], np)].astype(np.float64)
    for b in range(BATCH):
      logits = rows + query_tables[level][b]
      log_probs = logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)
      scores[b] += log_probs[np.arange(len(unique)), unique[:, level]]
  return unique, scores


def _reference_beam_search(sids, prefix_tables, query_tables, query, beam_size, levels=0):
  """Plain-Python constrained beam search for one query, over the first `levels` codes
  (0: all): list of (score, prefix)."""
  unique = {tuple(s) for s in np.unique(sids, axis=0)}
  beams = [(0.0, ())]
  for level, k in enumerate(SIZES[:levels or len(SIZES)]):
    candidates = []
    for score, prefix in beams:
      row = _prefix_hash(np.array([prefix], np.int64).reshape(1, level), np)[0]
      logits = prefix_tables[level][row].astype(np.float64) + query_tables[level][query]
      log_probs = logits - np.logaddexp.reduce(logits)
      for code in range(k):
        if any(s[:level + 1] == prefix + (code,) for s in unique):
          candidates.append((score + log_probs[code], prefix + (code,)))
    beams = sorted(candidates, key=lambda c: -c[0])[:beam_size]
  return beams


@functools.lru_cache(maxsize=None)
def _jitted_search(beam_size, levels=0):
  prefix_tables, query_tables = _toy_tables()

  @jax.jit
  def search(tables):
    logits_fn = functools.partial(_toy_logits, prefix_tables, query_tables, beam_size)
    return decoding.beam_search(logits_fn, BATCH, beam_size, tables, SIZES, levels)
  return search


def _search(sids, beam_size):
  tables = index.build_prefix_tables(sids, SIZES)
  return jax.tree.map(np.asarray, _jitted_search(beam_size)(tables))


def test_exact_when_beam_covers_every_prefix():
  sids = _toy_catalogue()
  unique, exact = _enumerate(sids, *_toy_tables())
  n = len(unique)
  assert n <= 20  # No level has more than 20 prefixes, so beam 20 is exhaustive.
  result = _search(sids, 20)
  for b in range(BATCH):
    order = np.argsort(-exact[b])
    np.testing.assert_array_equal(result.sequences[b, :n], unique[order])
    np.testing.assert_allclose(result.scores[b, :n], exact[b, order], rtol=1e-5)
    np.testing.assert_array_equal(result.leaf_nodes[b, :n], order)
    assert np.all(result.valid[b, :n]) and not np.any(result.valid[b, n:])
    assert np.all(result.scores[b, n:] == -np.inf)


@pytest.mark.parametrize("beam_size", [1, 3, 8, 20])
def test_small_beams_match_reference_and_return_existing_sids(beam_size):
  sids = _toy_catalogue(num_items=60, seed=3)
  prefix_tables, query_tables = _toy_tables()
  unique, exact = _enumerate(sids, prefix_tables, query_tables)
  assert len(unique) > 20  # Beam search is approximate here.
  result = _search(sids, beam_size)
  assert np.all(result.valid)
  for b in range(BATCH):
    expected = _reference_beam_search(sids, prefix_tables, query_tables, b, beam_size)
    assert [tuple(s) for s in result.sequences[b]] == [sid for _, sid in expected]
    # Whatever the beam keeps is an existing SID, once, scored by its true log-prob.
    leaves = result.leaf_nodes[b]
    assert len(set(leaves.tolist())) == beam_size
    np.testing.assert_array_equal(result.sequences[b], unique[leaves])
    np.testing.assert_allclose(result.scores[b], exact[b, leaves], rtol=1e-5)
    assert np.all(np.diff(result.scores[b]) <= 0)
    assert result.scores[b, 0] <= exact[b].max() + 1e-5


@pytest.mark.parametrize("levels", [1, 2])
def test_search_stopped_early_keeps_the_best_prefixes(levels):
  sids = _toy_catalogue(num_items=60, seed=3)
  prefix_tables, query_tables = _toy_tables()
  tables = index.build_prefix_tables(sids, SIZES)
  result = jax.tree.map(np.asarray, _jitted_search(4, levels)(tables))
  prefixes = np.unique(sids[:, :levels], axis=0)  # Level `levels`' nodes, in id order.
  assert len(prefixes) > 4  # The beams choose.
  for b in range(BATCH):
    expected = _reference_beam_search(sids, prefix_tables, query_tables, b, 4, levels)
    assert [tuple(s[:levels]) for s in result.sequences[b]] == [p for _, p in expected]
    np.testing.assert_allclose(result.scores[b], [score for score, _ in expected], rtol=1e-5)
    assert np.all(result.sequences[b, :, levels:] == -1) and np.all(result.valid[b])
    np.testing.assert_array_equal(prefixes[result.leaf_nodes[b]],
                                  result.sequences[b, :, :levels])


def test_narrow_beam_is_approximate_wider_beam_recovers_best():
  # Code 0 wins level 0, but its children are uniform while code 1 has a sure child:
  # log P(0, c) = log sigmoid(1) + log(1/4) = -1.70 < log P(1, 0) = log sigmoid(-1) - 1e-4.
  sizes = (2, 4)
  tables = index.build_prefix_tables(np.array([[a, b] for a in range(2) for b in range(4)]),
                                     sizes)

  def logits_fn(level, prefix):
    if level == 0:
      return jnp.tile(jnp.array([1.0, 0.0]), (prefix.shape[0], 1))
    sure = jnp.array([10.0, 0.0, 0.0, 0.0])
    return jnp.where(prefix[:, :1] == 1, sure, jnp.zeros(4))

  search = jax.jit(lambda tables, beam_size: decoding.beam_search(
      logits_fn, 1, beam_size, tables, sizes), static_argnums=1)
  greedy, wide = search(tables, 1), search(tables, 2)
  assert greedy.sequences[0, 0, 0] == 0
  np.testing.assert_array_equal(wide.sequences[0, 0], [1, 0])
  assert wide.scores[0, 0] > greedy.scores[0, 0]


def test_padding_when_fewer_sids_than_beams():
  sids = np.array([[1, 2, 0], [1, 3, 2], [4, 0, 1], [1, 2, 0]])
  result = _search(sids, 5)
  np.testing.assert_array_equal(result.valid, [[True] * 3 + [False] * 2] * BATCH)
  assert np.all(result.scores[:, 3:] == -np.inf) and np.all(np.isfinite(result.scores[:, :3]))
  assert np.all(result.sequences[:, 3:] == -1) and np.all(result.leaf_nodes[:, 3:] == -1)
  existing = {tuple(s) for s in sids}
  for b in range(BATCH):
    assert {tuple(s) for s in result.sequences[b, :3]} == existing


def test_compiles_once_for_repeated_calls():
  sids = _toy_catalogue()
  tables = index.build_prefix_tables(sids, SIZES)
  prefix_tables, _ = _toy_tables()

  @jax.jit
  @chex.assert_max_traces(n=1)
  def search(query_bias):
    def logits_fn(level, prefix):
      return _toy_logits(prefix_tables, query_bias, 4, level, prefix)
    return decoding.beam_search(logits_fn, BATCH, 4, tables, SIZES)

  chex.clear_trace_counter()
  rng = np.random.default_rng(0)
  for _ in range(3):
    bias = [jnp.asarray(rng.normal(size=(BATCH, k)), jnp.float32) for k in SIZES]
    jax.block_until_ready(search(bias))


def _normalise(x):
  x = np.asarray(x, np.float32)
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_rank_items_lexicographic_on_collisions():
  # Items 0, 2 share SID (0, 0, 0); items 1, 3, 4 share (1, 1, 1); item 5 has (2, 0, 0).
  sids = np.array([[0, 0, 0], [1, 1, 1], [0, 0, 0], [1, 1, 1], [1, 1, 1], [2, 0, 0]])
  inverted = index.build_inverted_index(sids)  # Leaves: 0 = (0,0,0), 1 = (1,1,1), 2 = (2,0,0).
  angles = np.array([0.5, 0.1, 0.2, 1.2, 0.0, 0.3])  # cosine = cos(angle) with the query.
  item_emb = np.stack([np.cos(angles), np.sin(angles)], axis=1)
  query = np.array([[1.0, 0.0]])
  beams = decoding.BeamResult(
      sequences=jnp.array([[[1, 1, 1], [0, 0, 0], [-1, -1, -1]]], jnp.int32),
      scores=jnp.array([[-0.5, -1.0, -np.inf]], jnp.float32),
      leaf_nodes=jnp.array([[1, 0, -1]], jnp.int32),
      valid=jnp.array([[True, True, False]]))
  rank = jax.jit(decoding.rank_items, static_argnums=4)
  items, beam_scores, cosines = map(
      np.asarray, rank(beams, inverted, jnp.asarray(query, jnp.float32),
                       jnp.asarray(_normalise(item_emb)), 12))
  # Beam (1,1,1) first even though item 2 of the second bucket has a higher cosine than
  # item 3; inside a bucket, higher cosine first; item 5's SID was not generated. k = 12
  # exceeds the 3 beams x 3 bucket slots, so the tail is padding.
  np.testing.assert_array_equal(items, [[4, 1, 3, 2, 0] + [-1] * 7])
  np.testing.assert_allclose(beam_scores, [[-0.5] * 3 + [-1.0] * 2 + [-np.inf] * 7])
  np.testing.assert_allclose(cosines[0, :5], np.cos(angles[[4, 1, 3, 2, 0]]), rtol=1e-6)
  assert np.all(cosines[0, 5:] == -np.inf)
  # k smaller than the candidate list truncates it.
  items, _, _ = rank(beams, inverted, jnp.asarray(query, jnp.float32),
                     jnp.asarray(_normalise(item_emb)), 2)
  np.testing.assert_array_equal(items, [[4, 1]])


@pytest.mark.parametrize("ranking, cosine_weight, expected", [
    ("beam", 0.0, [4, 1, 3, 2, 0]),
    # Over the union of both buckets: cos 1.0, .995, .980, .878, .362.
    ("cosine", 0.0, [4, 1, 2, 0, 3]),
    # beam score + 0.9 cos: 4: .40, 1: .396, 2: -.118, 3: -.174, 0: -.210 (item 2 passes
    # item 3 once the weight exceeds .81, item 0 passes it above .97).
    ("blend", 0.9, [4, 1, 2, 3, 0]),
    ("blend", 0.0, [4, 1, 3, 2, 0]),  # Ties on the beam score fall back to the cosine.
])
def test_rank_items_orders(ranking, cosine_weight, expected):
  # The catalogue of test_rank_items_lexicographic_on_collisions.
  sids = np.array([[0, 0, 0], [1, 1, 1], [0, 0, 0], [1, 1, 1], [1, 1, 1], [2, 0, 0]])
  inverted = index.build_inverted_index(sids)
  angles = np.array([0.5, 0.1, 0.2, 1.2, 0.0, 0.3])
  item_emb = _normalise(np.stack([np.cos(angles), np.sin(angles)], axis=1))
  beams = decoding.BeamResult(
      sequences=jnp.array([[[1, 1, 1], [0, 0, 0], [-1, -1, -1]]], jnp.int32),
      scores=jnp.array([[-0.5, -1.0, -np.inf]], jnp.float32),
      leaf_nodes=jnp.array([[1, 0, -1]], jnp.int32),
      valid=jnp.array([[True, True, False]]))
  rank = jax.jit(decoding.rank_items, static_argnums=(4, 5, 6, 7))
  items, beam_scores, cosines = map(np.asarray, rank(
      beams, inverted, jnp.array([[1.0, 0.0]]), jnp.asarray(item_emb), 6, 0, ranking,
      cosine_weight))
  np.testing.assert_array_equal(items, [expected + [-1]])  # Item 5's SID: no beam.
  np.testing.assert_allclose(cosines[0, :5], np.cos(angles[expected]), rtol=1e-6)
  np.testing.assert_allclose(beam_scores[0, :5],
                             [-0.5 if i in (1, 3, 4) else -1.0 for i in expected])


@pytest.mark.parametrize("ranking, expected", [("beam", [1, 3, 0]), ("cosine", [1, 0, 3])])
def test_rank_items_leaves_out_excluded_items(ranking, expected):
  # The catalogue of test_rank_items_orders; request 0 excludes items 4 and 2 (and a
  # padding slot), request 1 nothing: its ranking is the unexcluded one.
  sids = np.array([[0, 0, 0], [1, 1, 1], [0, 0, 0], [1, 1, 1], [1, 1, 1], [2, 0, 0]])
  inverted = index.build_inverted_index(sids)
  angles = np.array([0.5, 0.1, 0.2, 1.2, 0.0, 0.3])
  item_emb = _normalise(np.stack([np.cos(angles), np.sin(angles)], axis=1))
  beams = decoding.BeamResult(
      sequences=jnp.array([[[1, 1, 1], [0, 0, 0], [-1, -1, -1]]] * 2, jnp.int32),
      scores=jnp.array([[-0.5, -1.0, -np.inf]] * 2, jnp.float32),
      leaf_nodes=jnp.array([[1, 0, -1]] * 2, jnp.int32),
      valid=jnp.array([[True, True, False]] * 2))
  rank = jax.jit(decoding.rank_items, static_argnums=(4, 5, 6, 7))
  items, beam_scores, cosines = map(np.asarray, rank(
      beams, inverted, jnp.array([[1.0, 0.0]] * 2), jnp.asarray(item_emb), 6, 0, ranking,
      0.0, exclude=jnp.array([[4, -1, 2], [-1, -1, -1]], jnp.int32)))
  np.testing.assert_array_equal(items[0], expected + [-1] * 3)
  np.testing.assert_allclose(cosines[0, :3], np.cos(angles[expected]), rtol=1e-6)
  assert np.all(beam_scores[0, 3:] == -np.inf)
  unexcluded = {"beam": [4, 1, 3, 2, 0], "cosine": [4, 1, 2, 0, 3]}[ranking]
  np.testing.assert_array_equal(items[1], unexcluded + [-1])


# Leaves: 0 = (0,0,0) item 0, 1 = (0,1,0) item 2, 2 = (1,0,0) item 4, 3 = (1,1,1) item 1,
# 4 = (1,1,2) item 3, 5 = (2,0,0) item 5. Length-1 prefixes: 0 = (0), 1 = (1), 2 = (2);
# length 2: 0 = (0,0), 1 = (0,1), 2 = (1,0), 3 = (1,1), 4 = (2,0).
PREFIX_SIDS = np.array([[0, 0, 0], [1, 1, 1], [0, 1, 0], [1, 1, 2], [1, 0, 0], [2, 0, 0]])
# Per search depth (0 = the whole SID): the beams' codes, scores and nodes; one beam dead.
PREFIX_BEAMS = {
    0: ([[1, 1, 1], [1, 1, 2], [0, 0, 0]], [-0.5, -0.7, -1.0], [3, 4, 0]),
    2: ([[1, 1, -1], [0, 0, -1], [1, 0, -1]], [-0.5, -1.0, -1.2], [3, 0, 2]),
    1: ([[1, -1, -1], [0, -1, -1], [2, -1, -1]], [-0.5, -1.0, -3.0], [1, 0, 2]),
}


def prefix_search(level: int):
  """The PREFIX_SIDS index, its items' angles (cosine = cos(angle) with the query [1, 0]),
  their unit vectors [6, 2] and the beams of PREFIX_BEAMS[level] for one request, a fourth
  beam dead."""
  inverted = index.build_inverted_index(PREFIX_SIDS)
  angles = np.array([0.5, 0.1, 0.2, 1.2, 0.0, 0.3])
  item_emb = _normalise(np.stack([np.cos(angles), np.sin(angles)], axis=1))
  codes, scores, nodes = PREFIX_BEAMS[level]
  beams = decoding.BeamResult(
      sequences=jnp.array([codes + [[-1, -1, -1]]], jnp.int32),
      scores=jnp.array([scores + [-np.inf]], jnp.float32),
      leaf_nodes=jnp.array([nodes + [-1]], jnp.int32),
      valid=jnp.array([[True, True, True, False]]))
  return inverted, angles, item_emb, beams


@pytest.mark.parametrize("level, ranking, expected, expected_scores", [
    (0, "beam", [1, 3, 0], [-0.5, -0.7, -1.0]),  # The beams' own SIDs.
    (2, "beam", [1, 3, 0, 4], [-0.5, -0.5, -1.0, -1.2]),  # (1,1): 1, 3; (0,0): 0; (1,0): 4.
    (2, "cosine", [4, 1, 0, 3], [-1.2, -0.5, -1.0, -0.5]),
    # (1) holds items 4, 1, 3, (0) items 2, 0 and (2) item 5, the worst prefix.
    (1, "beam", [4, 1, 3, 2, 0, 5], [-0.5] * 3 + [-1.0] * 2 + [-3.0]),
    (1, "cosine", [4, 1, 2, 5, 0, 3], [-0.5, -0.5, -1.0, -3.0, -1.0, -0.5]),
])
def test_rank_items_candidate_level(level, ranking, expected, expected_scores):
  inverted, angles, item_emb, beams = prefix_search(level)
  rank = jax.jit(decoding.rank_items, static_argnums=(4, 5, 6, 7),
                 static_argnames="candidate_level")
  items, beam_scores, cosines = map(np.asarray, rank(
      beams, inverted, jnp.array([[1.0, 0.0]]), jnp.asarray(item_emb), 7, 0, ranking, 0.0,
      candidate_level=level))
  n = len(expected)
  np.testing.assert_array_equal(items[0], expected + [-1] * (7 - n))
  np.testing.assert_allclose(beam_scores[0, :n], expected_scores)
  np.testing.assert_allclose(cosines[0, :n], np.cos(angles[expected]), rtol=1e-6)
  with pytest.raises(ValueError, match="candidate_level=4"):
    decoding.rank_items(beams, inverted, jnp.array([[1.0, 0.0]]), jnp.asarray(item_emb), 6,
                        candidate_level=4)


# log P(whole SID | request) of items 0..5 under the PREFIX_SIDS catalogue.
ITEM_SID_LOG_PROBS = np.array([-1.0, -2.0, -0.4, -0.1, -3.0, -2.5], np.float32)


@pytest.mark.parametrize("cosine_weight, expected", [
    # The beams (1), (0), (2) hold every item; the SIDs' log-probabilities alone order
    # them, across prefixes and inside one: 3 (-.1), 2 (-.4), 0, 1, 5, 4 (-3).
    (0.0, [3, 2, 0, 1, 5, 4]),
    # + 2 cos (1.0 .995 .980 .878 .362 .955 for items 4 1 2 0 3 5): 2: 1.56, 0: .756,
    # 3: .624, 1: -.01, 5: -.59, 4: -1.0.
    (2.0, [2, 0, 3, 1, 5, 4]),
])
def test_rank_items_sid_orders_items_under_a_prefix_by_their_whole_sid(cosine_weight,
                                                                        expected):
  inverted, angles, item_emb, beams = prefix_search(1)
  seen = []
  def sid_log_prob(items):  # [1, C] candidate slots, padding as item 0.
    seen.append(items.shape)
    return jnp.asarray(ITEM_SID_LOG_PROBS)[items]
  rank = jax.jit(functools.partial(decoding.rank_items, ranking="sid", candidate_level=1,
                                   sid_log_prob=sid_log_prob), static_argnums=4,
                 static_argnames="sid_rerank_depth")
  items, beam_scores, cosines = map(np.asarray, rank(
      beams, inverted, jnp.array([[1.0, 0.0]]), jnp.asarray(item_emb), 7,
      cosine_weight=jnp.float32(cosine_weight)))
  assert seen and seen[0][0] == 1  # Traced once, over the request's candidate slots.
  np.testing.assert_array_equal(items[0], expected + [-1])
  prefix_score = {0: -1.0, 2: -1.0, 1: -0.5, 3: -0.5, 4: -0.5, 5: -3.0}
  np.testing.assert_allclose(beam_scores[0, :6], [prefix_score[i] for i in expected])
  np.testing.assert_allclose(cosines[0, :6], np.cos(angles[expected]), rtol=1e-6)
  with pytest.raises(ValueError, match="needs sid_log_prob"):
    decoding.rank_items(beams, inverted, jnp.array([[1.0, 0.0]]), jnp.asarray(item_emb), 7,
                        ranking="sid", candidate_level=1)
  if cosine_weight:
    return
  # With a rerank depth of 3 the decoder scores the 3 of highest cosine only (items 4, 1,
  # 2), and orders them 2 (-.4), 1 (-2), 4 (-3); k = 2 of them.
  seen.clear()
  items, _, _ = rank(beams, inverted, jnp.array([[1.0, 0.0]]), jnp.asarray(item_emb), 2,
                     cosine_weight=jnp.float32(0.0), sid_rerank_depth=3)
  assert seen == [(1, 3)]
  np.testing.assert_array_equal(items, [[2, 1]])


def test_rank_items_refuses_unknown_ranking():
  inverted = index.build_inverted_index(np.array([[0, 0, 0]]))
  beams = decoding.BeamResult(sequences=jnp.zeros((1, 1, 3), jnp.int32),
                              scores=jnp.zeros((1, 1)), leaf_nodes=jnp.zeros((1, 1), jnp.int32),
                              valid=jnp.ones((1, 1), bool))
  with pytest.raises(ValueError, match="ranking='popularity'"):
    decoding.rank_items(beams, inverted, jnp.ones((1, 2)), jnp.ones((1, 2)), 1,
                        ranking="popularity")


@pytest.mark.parametrize("candidate_level", [0, 1, 2])
def test_search_then_rank_end_to_end(candidate_level):
  sids = _toy_catalogue(num_items=60, seed=3)
  rng = np.random.default_rng(5)
  item_emb = jnp.asarray(_normalise(rng.normal(size=(len(sids), 8))))
  query_emb = jnp.asarray(_normalise(rng.normal(size=(BATCH, 8))))
  tables = index.build_prefix_tables(sids, SIZES)
  inverted = index.build_inverted_index(sids)
  result = _jitted_search(4, candidate_level)(tables)
  items, beam_scores, cosines = map(np.asarray, jax.jit(
      decoding.rank_items, static_argnums=4, static_argnames="candidate_level")(
          result, inverted, query_emb, item_emb, 10, candidate_level=candidate_level))
  length = candidate_level or len(SIZES)  # Codes an item shares with its beam.
  for b in range(BATCH):
    expected, score_of_prefix = [], {}
    for seq, score in zip(np.asarray(result.sequences[b]), np.asarray(result.scores[b])):
      prefix = tuple(seq[:length])
      assert prefix not in score_of_prefix  # The search keeps distinct prefixes.
      score_of_prefix[prefix] = score
      bucket = np.flatnonzero(np.all(sids[:, :length] == prefix, axis=1))
      expected += sorted(bucket, key=lambda i: -float(item_emb[i] @ query_emb[b]))
    expected = (expected + [-1] * 10)[:10]
    np.testing.assert_array_equal(items[b], expected)
    for item, beam_score, cosine in zip(items[b], beam_scores[b], cosines[b]):
      if item >= 0:
        assert beam_score == score_of_prefix[tuple(sids[item, :length])]
        assert cosine == pytest.approx(float(item_emb[item] @ query_emb[b]), abs=1e-6)


def test_with_dgi_model_prefix_logits():
  """The callback contract with the real decoder: beam scores equal the model's
  teacher-forced log P(SID) recomputed level by level."""
  from dgi_jax.models.config import ModelConfig  # pylint: disable=g-import-not-at-top
  from dgi_jax.models.dgi import DGIModel  # pylint: disable=g-import-not-at-top
  sizes, batch, beam_size, width = (6, 5, 4), 2, 5, 16
  cfg = ModelConfig(vocab_size=50, max_len=8, d_model=width, num_heads=2, mlp_dim=32,
                    encoder_layers=1, decoder_layers=1, codebook_sizes=sizes)
  model = DGIModel(cfg)
  rng = np.random.default_rng(0)
  z_q = jnp.asarray(rng.normal(size=(batch, width)), jnp.float32)
  states = jnp.asarray(rng.normal(size=(batch, 8, width)), jnp.float32)
  mask = jnp.ones((batch, 8), bool)
  prefix_logits = functools.partial(model.apply, method=DGIModel.prefix_logits)
  # Random parameters from the shapes alone: compiling the initialisers costs seconds on CPU
  # and the values do not matter here.
  shapes = jax.eval_shape(functools.partial(model.init, method=DGIModel.prefix_logits),
                          jax.random.key(0), z_q, states, mask,
                          jnp.zeros((batch, 0), jnp.int32))
  params = jax.tree.map(lambda s: rng.normal(0, 0.5, s.shape).astype(s.dtype), shapes)
  sids = np.stack([rng.integers(0, k, 40) for k in sizes], axis=1)
  tables = index.build_prefix_tables(sids, sizes)

  @jax.jit
  def search(params, z_q, states, mask, tables):
    rep = lambda x: decoding.expand_to_beams(x, beam_size)
    def logits_fn(level, prefix):
      del level  # The model reads the level off the prefix length.
      return prefix_logits(params, rep(z_q), rep(states), rep(mask), prefix)
    return decoding.beam_search(logits_fn, batch, beam_size, tables, sizes)

  result = search(params, z_q, states, mask, tables)
  sequences = np.asarray(result.sequences).reshape(batch * beam_size, len(sizes))
  existing = {tuple(s) for s in sids}
  assert all(tuple(s) in existing for s in sequences)
  # Rescore with one teacher-forced pass over the hard codewords (the decoder is causal);
  # host-side numpy keeps the number of small compilations down.
  codebooks = [np.asarray(c) for c in model.apply(params, method=DGIModel.get_codebooks)]
  vectors = np.stack([codebooks[j][sequences[:, j]] for j in range(len(sizes) - 1)], axis=1)
  rep = lambda x: np.repeat(np.asarray(x), beam_size, axis=0)
  decode = jax.jit(functools.partial(model.apply, method=DGIModel.decode))
  level_logits = decode(params, rep(z_q), rep(states), rep(mask), vectors)
  log_p = 0.0
  for t, logits in enumerate(level_logits):
    logits = np.asarray(logits, np.float64)
    log_probs = logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)
    log_p += log_probs[np.arange(len(sequences)), sequences[:, t]]
  np.testing.assert_allclose(result.scores.reshape(-1), log_p, rtol=1e-5, atol=1e-5)

"""Prefix tables, inverted index and collision statistics against brute force."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dgi_jax import index

SIZES = (4, 3, 5)
# Hand-built catalogue: item 5 repeats item 0's SID, items 2 and 6 share (1, 2, 3).
SIDS = np.array([
    [0, 1, 2],  # item 0
    [0, 1, 4],  # item 1
    [1, 2, 3],  # item 2
    [3, 0, 0],  # item 3
    [0, 2, 0],  # item 4
    [0, 1, 2],  # item 5
    [1, 2, 3],  # item 6
])

# Jitted once per shape: eager dispatch of each small op is what makes tests slow on CPU.
valid_next = jax.jit(index.valid_next, static_argnums=1)
items_for_leaves = jax.jit(index.items_for_leaves, static_argnums=2)
items_for_prefixes = jax.jit(index.items_for_prefixes, static_argnums=(2, 3))


def _brute_force_valid(sids, level, prefix, k):
  """Codes c such that prefix + (c,) starts some SID."""
  match = np.all(sids[:, :level] == np.asarray(prefix)[None, :level], axis=1)
  mask = np.zeros(k, bool)
  mask[sids[match, level]] = True
  return mask


def test_tables_hand_built():
  tables = index.build_prefix_tables(SIDS, SIZES)
  # Level 0: root -> codes {0, 1, 3}; level 1 nodes are prefixes (0), (1), (3).
  np.testing.assert_array_equal(tables.child_offsets[0], [0, 3])
  np.testing.assert_array_equal(tables.child_codes[0], [0, 1, 3])
  # Level 1: (0) -> {1, 2}, (1) -> {2}, (3) -> {0}.
  np.testing.assert_array_equal(tables.child_offsets[1], [0, 2, 3, 4])
  np.testing.assert_array_equal(tables.child_codes[1], [1, 2, 2, 0])
  # Level 2: (0,1) -> {2, 4}, (0,2) -> {0}, (1,2) -> {3}, (3,0) -> {0}.
  np.testing.assert_array_equal(tables.child_offsets[2], [0, 2, 3, 4, 5])
  np.testing.assert_array_equal(tables.child_codes[2], [2, 4, 0, 3, 0])
  assert tables.num_leaves == 5
  assert tables.max_children == (3, 2, 2)


@pytest.mark.parametrize("seed", [0, 1])
def test_valid_next_matches_brute_force(seed):
  rng = np.random.default_rng(seed)
  sids = np.stack([rng.integers(0, k, 60) for k in SIZES], axis=1)
  tables = index.build_prefix_tables(sids, SIZES)
  unique = np.unique(sids, axis=0)  # Leaf order = lexicographic order.
  for level in range(len(SIZES)):
    # Node ids at `level` are the ranks of the distinct length-`level` prefixes.
    prefixes = np.unique(unique[:, :level], axis=0)
    nodes = jnp.arange(len(prefixes), dtype=jnp.int32)
    mask, child = map(np.asarray, valid_next(tables, level, nodes))
    next_prefixes = np.unique(unique[:, :level + 1], axis=0)
    for n, prefix in enumerate(prefixes):
      expected = _brute_force_valid(sids, level, prefix, SIZES[level])
      np.testing.assert_array_equal(mask[n], expected)
      for code in np.flatnonzero(expected):
        want = np.flatnonzero(np.all(next_prefixes == np.append(prefix, code), axis=1))
        assert child[n, code] == want[0]
      assert np.all(np.asarray(child[n])[~expected] == -1)


def test_valid_next_dead_nodes_and_batch_shape():
  tables = index.build_prefix_tables(SIDS, SIZES)
  mask, child = valid_next(tables, 1, jnp.array([[0, -1], [2, -1]], jnp.int32))
  assert mask.shape == (2, 2, SIZES[1]) and child.shape == (2, 2, SIZES[1])
  np.testing.assert_array_equal(mask[0, 0], [False, True, True])
  np.testing.assert_array_equal(mask[1, 0], [True, False, False])
  assert not np.any(mask[:, 1]) and np.all(child[:, 1] == -1)


def test_tables_memory_scales_with_items_not_codebooks():
  sizes = (4096, 1024, 256)
  rng = np.random.default_rng(0)
  sids = np.stack([rng.integers(0, k, 1000) for k in sizes], axis=1)
  tables = index.build_prefix_tables(sids, sizes)
  entries = sum(a.size for a in tables.child_offsets + tables.child_codes)
  # Offsets: 1 + n_1 + n_2 + m entries; codes: n_1 + n_2 + n_3; every n_t <= N.
  assert entries <= 2 * len(SIZES) * 1000 + len(SIZES) + 1


def test_inverted_index_buckets_agree_with_tables():
  tables = index.build_prefix_tables(SIDS, SIZES)
  inverted = index.build_inverted_index(SIDS)
  assert inverted.num_leaves == tables.num_leaves
  assert inverted.max_bucket == 2
  np.testing.assert_array_equal(inverted.leaf_sids, np.unique(SIDS, axis=0))
  # Every item's leaf holds its SID and lists it.
  np.testing.assert_array_equal(np.asarray(inverted.leaf_sids)[inverted.item_leaf], SIDS)
  items, valid = items_for_leaves(inverted, jnp.arange(-1, 5, dtype=jnp.int32))
  assert items.shape == (6, 2)
  buckets = [sorted(int(i) for i, v in zip(row, ok) if v) for row, ok in zip(items, valid)]
  assert buckets == [[], [0, 5], [1], [4], [2, 6], [3]]
  assert np.all(np.asarray(items)[~np.asarray(valid)] == -1)


def test_items_for_leaves_cap_truncates():
  inverted = index.build_inverted_index(SIDS)
  items, valid = items_for_leaves(inverted, jnp.array([0, 3]), 1)
  np.testing.assert_array_equal(items, [[0], [2]])
  assert np.all(valid)


def test_items_for_prefixes_hand_computed():
  # Distinct SIDs in order: leaf 0 (0,1,2) items 0, 5; leaf 1 (0,1,4) item 1; leaf 2
  # (0,2,0) item 4; leaf 3 (1,2,3) items 2, 6; leaf 4 (3,0,0) item 3. Length-1 prefixes:
  # node 0 = (0), 1 = (1), 2 = (3); length 2: 0 = (0,1), 1 = (0,2), 2 = (1,2), 3 = (3,0).
  inverted = index.build_inverted_index(SIDS)
  assert inverted.max_prefix_items == (4, 3)
  for level, nodes, expected in (
      (1, [-1, 0, 1, 2], [[], [0, 1, 4, 5], [2, 6], [3]]),
      (2, [0, 1, 2, 3], [[0, 1, 5], [4], [2, 6], [3]])):
    items, valid = items_for_prefixes(inverted, jnp.array(nodes), level)
    assert items.shape == (len(nodes), inverted.max_prefix_items[level - 1])
    assert [sorted(int(i) for i, v in zip(row, ok) if v)
            for row, ok in zip(items, valid)] == expected
    assert np.all(np.asarray(items)[~np.asarray(valid)] == -1)


def test_candidate_counts_hand_computed():
  # The index of `test_items_for_prefixes_hand_computed`: leaves hold 2, 1, 1, 2, 1 items;
  # length-1 prefixes 4, 2, 1; length-2 prefixes 3, 1, 2, 1.
  inverted = index.build_inverted_index(SIDS)
  nodes = np.array([[0, 3, -1], [4, -1, -1], [-1, -1, -1]])
  np.testing.assert_array_equal(index.candidate_counts(inverted, nodes), [4, 1, 0])
  np.testing.assert_array_equal(index.candidate_counts(inverted, nodes, level=3), [4, 1, 0])
  np.testing.assert_array_equal(index.candidate_counts(inverted, nodes, cap=1), [2, 1, 0])
  prefixes = np.array([[0, 1], [2, -1]])
  np.testing.assert_array_equal(index.candidate_counts(inverted, prefixes, level=1), [6, 1])
  np.testing.assert_array_equal(index.candidate_counts(inverted, prefixes, level=2), [4, 2])
  np.testing.assert_array_equal(
      index.candidate_counts(inverted, prefixes, level=1, cap=3), [5, 1])


def test_within_budget_keeps_the_fewest_best_nodes_holding_the_budget():
  # The index of `test_candidate_counts_hand_computed`; nodes in the search's order.
  inverted = index.build_inverted_index(SIDS)
  within = lambda nodes, level, budget, cap=0: np.asarray(index.within_budget(  # noqa: E731
      inverted, jnp.array(nodes), level, budget, cap)).tolist()
  leaves = [[0, 3, 4, -1]]  # 2, 2, 1 items; then no node.
  assert within(leaves, 0, 1) == [[True, False, False, False]]
  assert within(leaves, 0, 2) == [[True, False, False, False]]
  assert within(leaves, 0, 3) == [[True, True, False, False]]
  assert within(leaves, 0, 5) == [[True, True, True, False]]
  assert within(leaves, 0, 100) == [[True, True, True, False]]  # All, fewer than 100.
  assert within(leaves, 0, 2, cap=1) == [[True, True, False, False]]  # 1 item each.
  prefixes = [[1, 0, 2], [2, -1, -1]]  # Length 1: 2, 4, 1 items; 1 item.
  assert within(prefixes, 1, 3) == [[True, True, False], [True, False, False]]
  assert within(prefixes, 1, 6) == [[True, True, False], [True, False, False]]
  assert within(prefixes, 1, 7) == [[True, True, True], [True, False, False]]


@pytest.mark.parametrize("level", [1, 2])
def test_items_for_prefixes_against_brute_force(level):
  sizes = (3, 4, 2, 5)
  rng = np.random.default_rng(level)
  sids = np.stack([rng.integers(0, k, 200) for k in sizes], axis=1)
  inverted = index.build_inverted_index(sids)
  prefixes = np.unique(sids[:, :level], axis=0)  # Node n is the n-th distinct prefix.
  items, valid = items_for_prefixes(inverted, jnp.arange(len(prefixes)), level)
  for prefix, row, ok in zip(prefixes, np.asarray(items), np.asarray(valid)):
    expected = np.flatnonzero(np.all(sids[:, :level] == prefix, axis=1))
    np.testing.assert_array_equal(np.sort(row[ok]), expected)


def test_rebuild_with_added_items():
  new = np.array([[2, 0, 1], [0, 1, 2]])
  sids = np.concatenate([SIDS, new])
  tables = index.build_prefix_tables(sids, SIZES)
  inverted = index.build_inverted_index(sids)
  assert tables.num_leaves == inverted.num_leaves == 6
  mask, _ = valid_next(tables, 0, jnp.array([0]))
  np.testing.assert_array_equal(mask[0], [True, True, True, True])
  leaf = int(inverted.item_leaf[len(SIDS)])
  items, valid = items_for_leaves(inverted, jnp.array([leaf]))
  assert sorted(np.asarray(items)[np.asarray(valid)].tolist()) == [len(SIDS)]
  assert inverted.max_bucket == 3  # (0, 1, 2) now has items 0, 5 and 8.


def test_collision_stats_hand_computed():
  stats = index.collision_stats(SIDS, SIZES)
  assert stats["num_items"] == 7
  assert stats["num_distinct_sids"] == 5
  assert stats["unique_sid_share"] == pytest.approx(3 / 7)
  assert stats["max_bucket_size"] == 2
  assert stats["mean_bucket_size"] == pytest.approx(7 / 5)
  # Level 0 codes: 0 x4, 1 x2, 3 x1.
  p = np.array([4, 2, 1]) / 7
  assert stats["code_perplexity"][0] == pytest.approx(np.exp(-np.sum(p * np.log(p))))


def test_bad_sids_raise():
  with pytest.raises(ValueError):
    index.build_prefix_tables(np.array([[0, 3, 0]]), SIZES)
  with pytest.raises(ValueError):
    index.build_prefix_tables(np.array([[0, 1]]), SIZES)

"""Semantic-ID index: prefix tables that constrain decoding, and the SID -> items index.

Both structures are built on the host with numpy from the hard SIDs of the catalogue and
then live on the device as plain arrays, so decoding never touches the corpus itself.

Node numbering. Sort the distinct SIDs lexicographically. At level t (0 <= t <= m) the
distinct prefixes of length t are the nodes of that level, numbered in sorted order; level
0 has the single root node 0 and level m's nodes are the distinct SIDs ("leaves"). The
children of a node are contiguous in the next level's numbering, so each level is stored
as CSR: node `n` at level t owns next-level nodes `child_offsets[t][n] ..
child_offsets[t][n + 1] - 1`, and `child_codes[t][c]` is the code that leads to node `c`.
Memory is O(m * N) int32, independent of the codebook sizes (a dense prefix mask over
{4096, 1024, 256} would need prod K_j ~ 1e9 entries).

Adding items: neither structure is updated in place. Rebuild both from the extended SID
array (`np.concatenate([old_sids, new_sids])`); a rebuild is a lexicographic sort, O(N log N)
on the host. Node and leaf ids may shift, so rebuild both together.
"""

from typing import Dict, Sequence, Tuple

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from dgi_jax import metrics


@flax.struct.dataclass
class PrefixTables:
  """CSR trie of the SIDs that exist; one entry per level t = 0..m-1."""
  child_offsets: Tuple[jax.Array, ...]  # level t: [num_nodes_t + 1] int32 CSR offsets.
  child_codes: Tuple[jax.Array, ...]  # level t: [num_nodes_{t+1}] int32, sorted per node.
  codebook_sizes: Tuple[int, ...] = flax.struct.field(pytree_node=False, default=())
  # Largest number of children of any node at level t; bounds the gather in `valid_next`.
  max_children: Tuple[int, ...] = flax.struct.field(pytree_node=False, default=())

  @property
  def num_levels(self) -> int:
    return len(self.codebook_sizes)

  @property
  def num_leaves(self) -> int:
    """Number of distinct SIDs (nodes of level m)."""
    return int(self.child_codes[-1].shape[0])

  def nbytes(self) -> int:
    return int(sum(a.nbytes for a in self.child_offsets + self.child_codes))


@flax.struct.dataclass
class InvertedIndex:
  """Leaf node (distinct SID) -> items, as items sorted by SID with CSR offsets."""
  item_order: jax.Array  # [N] int32 item indices sorted by (SID, item index).
  leaf_offsets: jax.Array  # [num_leaves + 1] int32; leaf l's items: item_order[o[l]:o[l+1]].
  leaf_sids: jax.Array  # [num_leaves, m] int32 the distinct SIDs, sorted lexicographically.
  item_leaf: jax.Array  # [N] int32 leaf node of every item.
  # The items under a shorter prefix are contiguous in `item_order` too. Level t = 1..m-1
  # (entry t - 1): [num_nodes_t + 1] int32 offsets, node n's items item_order[o[n]:o[n+1]]
  # (node ids of `build_prefix_tables`' level t).
  prefix_offsets: Tuple[jax.Array, ...] = ()
  max_bucket: int = flax.struct.field(pytree_node=False, default=1)  # Largest bucket.
  # Level t = 1..m-1 (entry t - 1): most items under one length-t prefix.
  max_prefix_items: Tuple[int, ...] = flax.struct.field(pytree_node=False, default=())

  @property
  def num_leaves(self) -> int:
    return int(self.leaf_sids.shape[0])

  @property
  def num_levels(self) -> int:
    return int(self.leaf_sids.shape[1])

  def nbytes(self) -> int:
    arrays = (self.item_order, self.leaf_offsets, self.leaf_sids, self.item_leaf,
              *self.prefix_offsets)
    return int(sum(a.nbytes for a in arrays))


def _check_sids(sids, codebook_sizes=None) -> np.ndarray:
  sids = np.asarray(sids)
  if sids.ndim != 2 or sids.shape[0] == 0:
    raise ValueError(f"sids must be a non-empty [N, m] array, got shape {sids.shape}")
  if not np.issubdtype(sids.dtype, np.integer):
    raise ValueError(f"sids must be integers, got {sids.dtype}")
  if codebook_sizes is not None:
    if len(codebook_sizes) != sids.shape[1]:
      raise ValueError(f"{sids.shape[1]} SID levels but codebook_sizes={codebook_sizes}")
    too_big = sids >= np.asarray(codebook_sizes)[None, :]
    if np.any(sids < 0) or np.any(too_big):
      raise ValueError(f"SID codes outside [0, K_j) for codebook_sizes={codebook_sizes}")
  return sids.astype(np.int64)


def _sort_sids(sids: np.ndarray):
  """Lexicographic order of the rows, and a flag per sorted row: 'starts a new SID'."""
  order = np.lexsort(sids.T[::-1])  # lexsort's last key is the primary one.
  sorted_sids = sids[order]
  new = np.ones(len(sids), dtype=bool)
  new[1:] = np.any(sorted_sids[1:] != sorted_sids[:-1], axis=1)
  return order, sorted_sids, new


def build_prefix_tables(sids, codebook_sizes: Sequence[int]) -> PrefixTables:
  """Builds the CSR trie of the SIDs in `sids` ([N, m] int, duplicates allowed)."""
  codebook_sizes = tuple(int(k) for k in codebook_sizes)
  sids = _check_sids(sids, codebook_sizes)
  _, sorted_sids, new = _sort_sids(sids)
  unique = sorted_sids[new]  # [U, m] distinct SIDs, sorted.
  m = unique.shape[1]
  # node_of_row[t][u]: node id at level t of the length-t prefix of distinct SID u.
  node_of_row = [np.zeros(len(unique), dtype=np.int64)]
  for t in range(1, m + 1):
    starts = np.ones(len(unique), dtype=bool)
    starts[1:] = np.any(unique[1:, :t] != unique[:-1, :t], axis=1)
    node_of_row.append(np.cumsum(starts) - 1)
  offsets, codes, max_children = [], [], []
  for t in range(m):
    num_nodes = int(node_of_row[t][-1]) + 1
    num_children = int(node_of_row[t + 1][-1]) + 1
    # First distinct SID under each child: gives the child's code and its parent.
    first_row = np.searchsorted(node_of_row[t + 1], np.arange(num_children))
    parent = node_of_row[t][first_row]
    counts = np.bincount(parent, minlength=num_nodes)
    offsets.append(np.concatenate([[0], np.cumsum(counts)]).astype(np.int32))
    codes.append(unique[first_row, t].astype(np.int32))
    max_children.append(int(counts.max()))
  return PrefixTables(child_offsets=tuple(jnp.asarray(o) for o in offsets),
                      child_codes=tuple(jnp.asarray(c) for c in codes),
                      codebook_sizes=codebook_sizes, max_children=tuple(max_children))


def valid_next(tables: PrefixTables, level: int,
               node_ids: jax.Array) -> Tuple[jax.Array, jax.Array]:
  """Allowed next codes of prefixes at `level` (a static int); jittable.

  Each prefix gathers at most `max_children[level]` entries of its CSR row and scatters
  them into a K-wide mask, so the cost is O(num_prefixes * K_level) (what the logits
  already cost) and never depends on the catalogue size.

  Args:
    tables: the prefix tables.
    level: number of codes already in the prefixes, 0 <= level < m.
    node_ids: [...] int32 node ids at `level`; negative ids (dead beams) have no children.

  Returns:
    mask: [..., K_level] bool, True where the code continues to an existing SID.
    child: [..., K_level] int32 node id at level + 1 reached by each code, -1 if invalid.
  """
  k = tables.codebook_sizes[level]
  width = tables.max_children[level]
  offsets = tables.child_offsets[level]
  codes = tables.child_codes[level]
  batch_shape = node_ids.shape
  nodes = node_ids.reshape(-1).astype(jnp.int32)
  live = nodes >= 0
  safe = jnp.where(live, nodes, 0)
  start = offsets[safe]
  end = jnp.where(live, offsets[safe + 1], start)
  pos = start[:, None] + jnp.arange(width, dtype=jnp.int32)[None, :]  # [P, width]
  in_row = pos < end[:, None]
  child_code = codes[jnp.minimum(pos, codes.shape[0] - 1)]
  # Codes outside the row are sent out of bounds and dropped by the scatter.
  target = jnp.where(in_row, child_code, k)
  rows = jnp.arange(nodes.shape[0], dtype=jnp.int32)[:, None]
  child = jnp.full((nodes.shape[0], k), -1, jnp.int32).at[rows, target].set(
      pos, mode="drop")
  child = child.reshape(batch_shape + (k,))
  return child >= 0, child


def _csr_offsets(node_of_sorted_item: np.ndarray) -> np.ndarray:
  """[num_nodes + 1] int32 offsets of nodes numbered 0.. in the order of the items."""
  counts = np.bincount(node_of_sorted_item)
  return np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)


def build_inverted_index(sids) -> InvertedIndex:
  """SID -> items over `sids` ([N, m] int), and length-t prefix -> items for t < m; leaf
  and prefix node ids agree with `build_prefix_tables`."""
  sids = _check_sids(sids)
  order, sorted_sids, new = _sort_sids(sids)
  leaf_of_sorted = np.cumsum(new) - 1
  item_leaf = np.empty(len(sids), dtype=np.int32)
  item_leaf[order] = leaf_of_sorted
  unique = sorted_sids[new]  # [U, m] distinct SIDs, sorted.
  prefix_offsets = []
  for t in range(1, sids.shape[1]):
    starts = np.ones(len(unique), dtype=bool)
    starts[1:] = np.any(unique[1:, :t] != unique[:-1, :t], axis=1)
    node_of_leaf = np.cumsum(starts) - 1  # Length-t prefix node of each distinct SID.
    prefix_offsets.append(_csr_offsets(node_of_leaf[leaf_of_sorted]))
  leaf_offsets = _csr_offsets(leaf_of_sorted)
  return InvertedIndex(
      item_order=jnp.asarray(order.astype(np.int32)),
      leaf_offsets=jnp.asarray(leaf_offsets),
      leaf_sids=jnp.asarray(unique.astype(np.int32)),
      item_leaf=jnp.asarray(item_leaf),
      prefix_offsets=tuple(jnp.asarray(o) for o in prefix_offsets),
      max_bucket=int(np.diff(leaf_offsets).max()),
      max_prefix_items=tuple(int(np.diff(o).max()) for o in prefix_offsets))


def _slices(item_order: jax.Array, offsets: jax.Array, nodes: jax.Array,
            cap: int) -> Tuple[jax.Array, jax.Array]:
  """item_order[offsets[n]:offsets[n + 1]] of each node n in `nodes` [...] (negative:
  empty), as [..., cap] int32 items, -1 padded, and their [..., cap] bool validity."""
  live = nodes >= 0
  safe = jnp.where(live, nodes, 0)
  start = offsets[safe]
  end = jnp.where(live, offsets[safe + 1], start)
  pos = start[..., None] + jnp.arange(cap, dtype=jnp.int32)
  valid = pos < end[..., None]
  n = item_order.shape[0]
  items = jnp.where(valid, item_order[jnp.minimum(pos, n - 1)], -1)
  return items, valid


def items_for_leaves(index: InvertedIndex, leaf_nodes: jax.Array,
                     cap: int = 0) -> Tuple[jax.Array, jax.Array]:
  """Items of each leaf as a fixed-width padded slice; jittable.

  Args:
    index: the inverted index.
    leaf_nodes: [...] int32 leaf ids; negative ids give empty buckets.
    cap: static bucket width; 0 means `index.max_bucket` (no item is dropped). A smaller
      cap keeps the first `cap` items of a bucket in item-index order.

  Returns:
    items: [..., cap] int32 item indices, -1 padded.
    valid: [..., cap] bool.
  """
  return _slices(index.item_order, index.leaf_offsets, leaf_nodes, cap or index.max_bucket)


def items_for_prefixes(index: InvertedIndex, nodes: jax.Array, level: int,
                       cap: int = 0) -> Tuple[jax.Array, jax.Array]:
  """`items_for_leaves` for nodes of the length-`level` prefixes (static 1 <= level < m;
  the node ids of `build_prefix_tables`, which a beam search stopped after `level` codes
  returns): every item whose SID starts with the prefix; cap 0 is
  `index.max_prefix_items[level - 1]`. Jittable."""
  return _slices(index.item_order, index.prefix_offsets[level - 1], nodes,
                 cap or index.max_prefix_items[level - 1])


def node_sizes(index: InvertedIndex, nodes, level: int = 0, cap: int = 0) -> jax.Array:
  """int32 [...]: how many items each of a search's `nodes` [...] holds (0 for -1): leaves
  (whole SIDs) at `level` 0 or m, else the length-`level` prefixes; at most `cap` each
  when given (the ranking's static bucket width). Jittable."""
  offsets = (index.leaf_offsets if level in (0, index.num_levels)
             else index.prefix_offsets[level - 1])
  nodes = jnp.asarray(nodes)
  safe = jnp.maximum(nodes, 0)
  sizes = jnp.where(nodes >= 0, offsets[safe + 1] - offsets[safe], 0)
  return jnp.minimum(sizes, cap) if cap else sizes


def candidate_counts(index: InvertedIndex, nodes, level: int = 0, cap: int = 0) -> np.ndarray:
  """How many items a search's nodes hold per request: what `decoding.rank_items` scores.

  Args:
    index: the inverted index.
    nodes: int [B, beam] node ids of a search (-1 for none): leaves (whole SIDs) when
      `level` is 0 or m, else the length-`level` prefixes' nodes.
    level: the search's `candidate_level`.
    cap: the ranking's static bucket width (0: no item dropped); a node counts at most
      `cap` items, as `items_for_leaves` / `items_for_prefixes` take them.

  Returns:
    int64 [B], before any history item is left out.
  """
  return np.asarray(node_sizes(index, nodes, level, cap)).astype(np.int64).sum(axis=-1)


def within_budget(index: InvertedIndex, nodes: jax.Array, level: int, budget: int,
                  cap: int = 0) -> jax.Array:
  """bool [B, beam]: the nodes a candidate budget keeps; jittable.

  Of a search's nodes in its order (best first), the fewest that together hold at least
  `budget` items: a node is kept while the nodes before it hold fewer. Every node is kept
  when all of them together hold fewer. So regions of any size give about `budget`
  candidates per request, where a fixed beam gives beam x (items per region).

  Args:
    index: the inverted index.
    nodes: int [B, beam] node ids, best first (-1 for none), as in `candidate_counts`.
    level: the search's `candidate_level` (static).
    budget: the least number of items to keep (static, >= 1).
    cap: the ranking's static bucket width (0: none), as in `candidate_counts`.
  """
  return (nodes >= 0) & first_holding(node_sizes(index, nodes, level, cap), budget)


def first_holding(sizes: jax.Array, budget: int) -> jax.Array:
  """bool [..., W]: of W regions holding `sizes` [..., W] items, in order, the first ones
  that together hold at least `budget` items (a region is kept while those before it hold
  fewer); all of them when they hold fewer. Jittable."""
  return jnp.cumsum(sizes, axis=-1) - sizes < budget


def collision_stats(sids, codebook_sizes: Sequence[int] = ()) -> Dict[str, object]:
  """Collision and code-usage statistics of a catalogue's SIDs ([N, m] int).

  Returns a dict: num_items, num_distinct_sids, unique_sid_share (share of items alone in
  their SID bucket), max_bucket_size, mean_bucket_size (items per distinct SID) and
  code_perplexity (list of m floats: exp of the entropy of each level's code frequencies;
  K_j when usage is uniform, 1 when one code takes everything).
  """
  sids = _check_sids(sids, tuple(codebook_sizes) or None)
  _, _, new = _sort_sids(sids)
  counts = np.diff(np.concatenate([np.flatnonzero(new), [len(sids)]]))
  sizes = tuple(codebook_sizes) or tuple(int(c) + 1 for c in sids.max(axis=0))
  return {
      "num_items": int(len(sids)),
      "num_distinct_sids": int(len(counts)),
      "unique_sid_share": float(np.sum(counts == 1) / len(sids)),
      "max_bucket_size": int(counts.max()),
      "mean_bucket_size": float(len(sids) / len(counts)),
      "code_perplexity": [float(p) for p in metrics.code_usage_perplexity(sids, sizes)],
  }

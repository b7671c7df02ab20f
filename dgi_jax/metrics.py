"""Retrieval metrics, the rankings' history overlap, long-tail buckets and hubness
statistics (host-side numpy).

Ranking metrics follow DGI_METHOD.md ("Metrics"), generalised to a set of relevant items
per request: binary relevance, positions are 1-based ranks.
  Hit@K    = 1 if any relevant item is in the top K.
  NDCG@K   = DCG@K / IDCG@K with DCG = sum over relevant items at rank r <= K of
             1 / log2(1 + r), and IDCG the DCG of min(R, K) relevant items at ranks 1..;
             with one relevant item this is 1 / log2(1 + rank).
  Recall@K = share of the request's relevant items in the top K.
  MRR@K    = 1 / rank of the first relevant item if it is within the top K, else 0.
Requests without any relevant item are left out (they add nothing to the counts).

Batches are accumulated as sums plus a request count (`metric_sums`, `merge_sums`) and
divided once at the end (`finalize`), so sharded or streamed evaluation averages exactly.
"""

from typing import Dict, List, Mapping, Sequence, Tuple

import numpy as np

DEFAULT_KS = (1, 5, 10, 20)
MRR_K = 20
COUNT_KEY = "count"


def first_positions(ranked, relevant) -> Tuple[np.ndarray, np.ndarray]:
  """0-based position of each relevant item in the ranking.

  Args:
    ranked: [Q, L] int item indices, best first, -1 = empty slot.
    relevant: [Q, R] int relevant item indices, -1 padded.

  Returns:
    positions: [Q, R] int, first position of relevant[q, r] in ranked[q], L if absent.
    is_relevant: [Q, R] bool, False at padding.
  """
  ranked = np.asarray(ranked)
  relevant = np.asarray(relevant)
  if ranked.ndim != 2 or relevant.ndim != 2 or ranked.shape[0] != relevant.shape[0]:
    raise ValueError(f"ranked {ranked.shape} and relevant {relevant.shape} must be [Q, *]")
  length = ranked.shape[1]
  is_relevant = relevant >= 0
  match = (ranked[:, None, :] == relevant[:, :, None]) & is_relevant[:, :, None]  # [Q,R,L]
  positions = np.where(match.any(-1), match.argmax(-1), length)
  return positions, is_relevant


def per_request_metrics(ranked, relevant, ks: Sequence[int] = DEFAULT_KS,
                        mrr_k: int = MRR_K) -> Dict[str, np.ndarray]:
  """Per-request metric values, [Q] float arrays keyed 'hit@K', 'ndcg@K', 'recall@K',
  'mrr@{mrr_k}', plus 'rank' (1-based rank of the first relevant item, 0 if none is
  ranked) and 'has_relevant' (bool, requests that count)."""
  positions, is_relevant = first_positions(ranked, relevant)
  num_relevant = is_relevant.sum(axis=1)
  has_relevant = num_relevant > 0
  denominator = np.maximum(num_relevant, 1)
  discount = 1.0 / np.log2(positions + 2.0)  # rank r = position + 1 -> 1 / log2(1 + r).
  out = {}
  for k in ks:
    in_top = is_relevant & (positions < k)
    out[f"hit@{k}"] = in_top.any(axis=1).astype(np.float64)
    out[f"recall@{k}"] = in_top.sum(axis=1) / denominator
    dcg = np.where(in_top, discount, 0.0).sum(axis=1)
    ideal_cumsum = np.cumsum(1.0 / np.log2(np.arange(k) + 2.0))
    idcg = ideal_cumsum[np.clip(np.minimum(num_relevant, k) - 1, 0, k - 1)]
    out[f"ndcg@{k}"] = np.where(has_relevant, dcg / idcg, 0.0)
  length = np.asarray(ranked).shape[1]
  best = np.where(is_relevant, positions, length).min(axis=1, initial=length)
  found = best < length
  out[f"mrr@{mrr_k}"] = np.where(found & (best < mrr_k), 1.0 / (best + 1.0), 0.0)
  out["rank"] = np.where(found, best + 1, 0)
  out["has_relevant"] = has_relevant
  return out


def metric_sums(ranked, relevant, ks: Sequence[int] = DEFAULT_KS,
                mrr_k: int = MRR_K) -> Dict[str, float]:
  """Sums of each metric over the requests with a relevant item, plus their 'count'."""
  values = per_request_metrics(ranked, relevant, ks, mrr_k)
  counted = values.pop("has_relevant")
  values.pop("rank")
  sums = {name: float(v[counted].sum()) for name, v in values.items()}
  sums[COUNT_KEY] = float(counted.sum())
  return sums


def merge_sums(a: Mapping[str, float], b: Mapping[str, float]) -> Dict[str, float]:
  """Adds two `metric_sums` results (e.g. from two batches or two hosts)."""
  if set(a) != set(b):
    raise ValueError(f"metric keys differ: {sorted(a)} vs {sorted(b)}")
  return {name: a[name] + b[name] for name in a}


def finalize(sums: Mapping[str, float]) -> Dict[str, float]:
  """Means from accumulated sums; NaN when no request counted."""
  count = sums[COUNT_KEY]
  means = {name: (value / count if count else float("nan"))
           for name, value in sums.items() if name != COUNT_KEY}
  means[COUNT_KEY] = count
  return means


def retrieval_metrics(ranked, relevant, ks: Sequence[int] = DEFAULT_KS,
                      mrr_k: int = MRR_K) -> Dict[str, float]:
  """Mean Hit@K, NDCG@K, Recall@K and MRR@mrr_k of one batch (see the module doc)."""
  return finalize(metric_sums(ranked, relevant, ks, mrr_k))


def history_overlap(ranked, relevant, history) -> Dict[str, float]:
  """How a ranking treats the request's own history items (the items of its history,
  which `eval.exclude_history` leaves out).

  Args:
    ranked: [Q, L] int item indices, best first, -1 = empty slot.
    relevant: [Q, R] int relevant item indices, -1 padded.
    history: [Q, H] int history item indices, -1 padded.

  Returns (over the requests with a relevant item, as the ranking metrics):
    relevant_in_history: share of (request, relevant item) pairs whose item is one of the
      request's history items: how often the split's users come back to an item.
    first_in_history: share of requests whose first-ranked item is a history item.
    ranked_in_history: history items per ranking (of its L slots), on average.
  """
  ranked, relevant, history = (np.asarray(x) for x in (ranked, relevant, history))
  in_history = lambda items: ((items[:, :, None] == history[:, None, :])
                              & (items[:, :, None] >= 0)).any(-1)  # [Q, *] bool
  pairs = relevant >= 0
  counted = pairs.any(axis=1)
  if not counted.any():
    return {"relevant_in_history": float("nan"), "first_in_history": float("nan"),
            "ranked_in_history": float("nan")}
  ranked_hist = in_history(ranked)[counted]
  return {"relevant_in_history": float(in_history(relevant)[pairs].mean()),
          "first_in_history": float(ranked_hist[:, 0].mean()),
          "ranked_in_history": float(ranked_hist.sum(axis=1).mean())}


# ---------------------------------------------------------------------------- long tail


def pair_hits(ranked, relevant, item_popularity, k: int = 10) -> Tuple[np.ndarray, np.ndarray]:
  """Flattens (request, relevant item) pairs: (training popularity [P], hit@k [P] bool)."""
  positions, is_relevant = first_positions(ranked, relevant)
  popularity = np.asarray(item_popularity)[np.asarray(relevant)[is_relevant]]
  # An absent item sits at position L; with k > L that must still be a miss.
  found = positions < min(k, np.shape(ranked)[1])
  return popularity, found[is_relevant]


def popularity_buckets(popularity_of_pair_items, hits,
                       num_buckets: int = 5) -> Dict[str, object]:
  """Hit rate per popularity bucket (DGI_METHOD.md, "Long-tail protocol").

  Pairs are sorted by their item's training popularity, most popular first (ties keep
  input order), and cut into `num_buckets` equal-count buckets (sizes differ by at most
  one); B0 is the head, the last bucket the tail (it holds the unseen items).

  Args:
    popularity_of_pair_items: [P] training popularity f(i) of each pair's relevant item.
    hits: [P] bool, whether that item is in the top 10 (see `pair_hits`).
    num_buckets: number of buckets.

  Returns:
    {'buckets': list of {'bucket', 'count', 'hit@10', 'popularity_min',
     'popularity_max'}, 'unseen': {'count', 'hit@10'} over pairs with f(i) = 0}.
  """
  popularity = np.asarray(popularity_of_pair_items)
  hits = np.asarray(hits, dtype=np.float64)
  if popularity.shape != hits.shape or popularity.ndim != 1:
    raise ValueError(f"popularity {popularity.shape} and hits {hits.shape} must be [P]")
  order = np.argsort(-popularity, kind="stable")
  buckets: List[Dict[str, object]] = []
  for b, chunk in enumerate(np.array_split(order, num_buckets)):
    empty = len(chunk) == 0
    buckets.append({
        "bucket": b,
        "count": int(len(chunk)),
        "hit@10": float("nan") if empty else float(hits[chunk].mean()),
        "popularity_min": None if empty else popularity[chunk].min().item(),
        "popularity_max": None if empty else popularity[chunk].max().item(),
    })
  unseen = popularity == 0
  return {"buckets": buckets,
          "unseen": {"count": int(unseen.sum()),
                     "hit@10": float(hits[unseen].mean()) if unseen.any() else float("nan")}}


# ---------------------------------------------------------------------------- hubness


def rankdata(x) -> np.ndarray:
  """1-based ranks of a 1-D array; ties get the average of the ranks they span."""
  x = np.asarray(x)
  order = np.argsort(x, kind="stable")
  sorted_x = x[order]
  starts = np.flatnonzero(np.concatenate([[True], sorted_x[1:] != sorted_x[:-1]]))
  ends = np.concatenate([starts[1:], [len(x)]])
  average = (starts + ends + 1) / 2.0  # mean of ranks starts+1 .. ends.
  ranks = np.empty(len(x), dtype=np.float64)
  ranks[order] = np.repeat(average, ends - starts)
  return ranks


def spearman(x, y) -> float:
  """Spearman rank correlation (Pearson correlation of average ranks); NaN if constant."""
  x = np.asarray(x).reshape(-1)
  y = np.asarray(y).reshape(-1)
  if x.shape != y.shape or len(x) < 2:
    raise ValueError(f"need two equal-length arrays of at least 2 values: {x.shape} {y.shape}")
  rx = rankdata(x) - (len(x) + 1) / 2.0
  ry = rankdata(y) - (len(y) + 1) / 2.0
  denominator = np.sqrt(np.sum(rx * rx) * np.sum(ry * ry))
  return float(np.sum(rx * ry) / denominator) if denominator > 0 else float("nan")


def norm_popularity_correlation(vectors, popularity) -> float:
  """Spearman correlation between row norms of `vectors` [N, d] and `popularity` [N].

  Hubness check: under dot-product geometry popular items tend to grow large norms.
  """
  return spearman(np.linalg.norm(np.asarray(vectors, np.float64), axis=-1), popularity)


def codeword_popularity(codes, item_popularity, codebook_size: int) -> np.ndarray:
  """Popularity of each codeword of one level: the summed f(i) of the items using it.

  Args:
    codes: [N] int code of each item at this level.
    item_popularity: [N] training popularity f(i).
    codebook_size: K of the level.

  Returns:
    [K] float popularity per codeword (feed with the codebook to
    `norm_popularity_correlation`; unused codewords have popularity 0).
  """
  return np.bincount(np.asarray(codes), weights=np.asarray(item_popularity, np.float64),
                     minlength=codebook_size)


def code_usage_perplexity(codes, codebook_sizes: Sequence[int]) -> np.ndarray:
  """exp(entropy) of each level's code frequencies; codes [N, m] -> [m] floats."""
  codes = np.asarray(codes)
  if codes.ndim != 2 or codes.shape[1] != len(codebook_sizes):
    raise ValueError(f"codes {codes.shape} do not match codebook_sizes {codebook_sizes}")
  out = []
  for level, size in enumerate(codebook_sizes):
    p = np.bincount(codes[:, level], minlength=size) / codes.shape[0]
    p = p[p > 0]
    out.append(float(np.exp(-np.sum(p * np.log(p)))))
  return np.asarray(out)

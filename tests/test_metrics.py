"""Metrics against hand-computed values."""

import numpy as np
import pytest

from dgi_jax import metrics

LOG2_3 = np.log2(3.0)


def test_single_relevant_at_rank_three():
  ranked = np.array([[5, 7, 3, 9, -1]])
  out = metrics.retrieval_metrics(ranked, np.array([[3]]), ks=(1, 5, 10, 20))
  assert out["hit@1"] == 0.0 and out["hit@5"] == 1.0
  assert out["ndcg@5"] == pytest.approx(0.5)  # 1 / log2(1 + 3).
  assert out["ndcg@10"] == pytest.approx(0.5)
  assert out["mrr@20"] == pytest.approx(1 / 3)
  assert out["recall@1"] == 0.0 and out["recall@5"] == 1.0
  assert out["count"] == 1


def test_two_relevant_items():
  # Relevant 9 at rank 2 and 4 at rank 5.
  ranked = np.array([[1, 9, 2, 8, 4, 6]])
  out = metrics.retrieval_metrics(ranked, np.array([[9, 4]]), ks=(1, 2, 5))
  assert out["hit@1"] == 0.0 and out["hit@2"] == 1.0
  assert out["recall@2"] == 0.5 and out["recall@5"] == 1.0
  assert out["ndcg@2"] == pytest.approx((1 / LOG2_3) / (1 + 1 / LOG2_3))
  assert out["ndcg@5"] == pytest.approx((1 / LOG2_3 + 1 / np.log2(6)) / (1 + 1 / LOG2_3))
  assert out["mrr@20"] == pytest.approx(0.5)


def test_ideal_dcg_uses_at_most_k_relevant_items():
  out = metrics.retrieval_metrics(np.array([[4, 1, 2]]), np.array([[4, 5, 6]]), ks=(1, 3))
  assert out["ndcg@1"] == pytest.approx(1.0)
  assert out["ndcg@3"] == pytest.approx(1 / (1 + 1 / LOG2_3 + 0.5))
  assert out["recall@1"] == pytest.approx(1 / 3)


def test_misses_padding_and_requests_without_relevant_items():
  ranked = np.array([[1, 2, -1], [-1, -1, -1], [7, 8, 9]])
  relevant = np.array([[5, -1], [-1, -1], [7, -1]])
  values = metrics.per_request_metrics(ranked, relevant, ks=(1, 3))
  np.testing.assert_array_equal(values["hit@3"], [0, 0, 1])
  np.testing.assert_array_equal(values["rank"], [0, 0, 1])
  np.testing.assert_array_equal(values["has_relevant"], [True, False, True])
  out = metrics.retrieval_metrics(ranked, relevant, ks=(1, 3))
  assert out["count"] == 2  # The request with no relevant item does not count.
  assert out["hit@1"] == pytest.approx(0.5) and out["mrr@20"] == pytest.approx(0.5)


def test_mrr_cutoff():
  ranked = np.arange(30)[None, :]
  assert metrics.retrieval_metrics(ranked, np.array([[24]]))["mrr@20"] == 0.0
  assert metrics.retrieval_metrics(ranked, np.array([[19]]))["mrr@20"] == pytest.approx(0.05)


def test_sums_accumulate_over_batches():
  rng = np.random.default_rng(0)
  ranked = np.stack([rng.permutation(50)[:20] for _ in range(12)])
  relevant = rng.integers(0, 50, (12, 3))
  relevant[::3, 1:] = -1
  whole = metrics.retrieval_metrics(ranked, relevant)
  sums = metrics.merge_sums(metrics.metric_sums(ranked[:5], relevant[:5]),
                            metrics.metric_sums(ranked[5:], relevant[5:]))
  parts = metrics.finalize(sums)
  assert parts.keys() == whole.keys()
  for name in whole:
    assert parts[name] == pytest.approx(whole[name])


def test_history_overlap():
  ranked = np.array([[4, 7, 2], [9, 1, -1], [3, 5, 6], [8, 0, 1]])
  relevant = np.array([[2, -1], [5, 1], [-1, -1], [6, -1]])
  history = np.array([[4, 2, -1], [1, -1, -1], [3, 5, 6], [-1, -1, -1]])
  out = metrics.history_overlap(ranked, relevant, history)
  # Request 2 has no relevant item and is left out; -1 never counts as an item.
  assert out["relevant_in_history"] == pytest.approx(2 / 4)  # 2 and 1 of 2, 5, 1, 6.
  assert out["first_in_history"] == pytest.approx(1 / 3)  # Only request 0 starts with one.
  assert out["ranked_in_history"] == pytest.approx((2 + 1 + 0) / 3)


def test_pair_hits():
  ranked = np.array([[3, 1] + list(range(10, 18)) + [4], [2, 9] + [-1] * 9])
  relevant = np.array([[1, 4], [5, -1]])
  popularity = np.arange(20) * 10
  pop, hits = metrics.pair_hits(ranked, relevant, popularity, k=10)
  np.testing.assert_array_equal(pop, [10, 40, 50])
  np.testing.assert_array_equal(hits, [True, False, False])  # Item 4 is 11th.


def test_popularity_buckets_edges():
  popularity = np.array([10, 0, 5, 3, 8, 0, 1, 2, 7, 4])
  hits = np.array([1, 0, 1, 0, 1, 1, 0, 0, 0, 1], bool)
  out = metrics.popularity_buckets(popularity, hits)
  # Sorted: 10 8 | 7 5 | 4 3 | 2 1 | 0 0.
  ranges = [(b["popularity_max"], b["popularity_min"]) for b in out["buckets"]]
  assert ranges == [(10, 8), (7, 5), (4, 3), (2, 1), (0, 0)]
  assert [b["count"] for b in out["buckets"]] == [2] * 5
  assert [b["hit@10"] for b in out["buckets"]] == [1.0, 0.5, 0.5, 0.0, 0.5]
  assert out["unseen"] == {"count": 2, "hit@10": 0.5}


def test_popularity_buckets_uneven_counts():
  out = metrics.popularity_buckets(np.arange(11)[::-1], np.ones(11, bool))
  assert [b["count"] for b in out["buckets"]] == [3, 2, 2, 2, 2]
  assert out["buckets"][0]["popularity_min"] == 8
  assert out["unseen"]["count"] == 1


def test_rankdata_and_spearman():
  np.testing.assert_array_equal(metrics.rankdata([10, 20, 20, 30]), [1, 2.5, 2.5, 4])
  # No ties: 1 - 6 * sum(d^2) / (n (n^2 - 1)) with d = (0, 1, 1, 0).
  assert metrics.spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
  # Ties: ranks of y are (1, 2, 3.5, 5, 3.5); Pearson of centred ranks = 8 / sqrt(10 * 9.5).
  assert metrics.spearman([1, 2, 3, 4, 5], [5, 6, 7, 8, 7]) == pytest.approx(8 / np.sqrt(95))
  assert metrics.spearman([3, 2, 1], [1, 2, 3]) == pytest.approx(-1.0)
  assert np.isnan(metrics.spearman([1, 1, 1], [1, 2, 3]))


def test_hubness_helpers():
  vectors = np.array([[3.0, 0.0], [0.0, 1.0], [2.0, 0.0], [0.0, 4.0]])
  assert metrics.norm_popularity_correlation(vectors, [30, 10, 20, 40]) == pytest.approx(1.0)
  np.testing.assert_array_equal(
      metrics.codeword_popularity([0, 2, 2, 1], [1, 2, 3, 4], 4), [1, 4, 5, 0])


def test_code_usage_perplexity():
  codes = np.array([[0, 1], [1, 1], [2, 1], [3, 1]])
  np.testing.assert_allclose(metrics.code_usage_perplexity(codes, (4, 2)), [4.0, 1.0])

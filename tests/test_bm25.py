"""Tests of the BM25 baseline: hand-checkable rankings, a from-the-formula reference,
request texts, and (with ../shared/data) BEIR's SciFact number."""

import math

import numpy as np
import pytest

from conftest import SHARED_DATA
from dgi_jax import metrics
from dgi_jax.baselines import bm25
from dgi_jax.data import jsonl_format
from dgi_jax.data.converters import scifact

# Lengths 2, 3, 3, 3 tokens: average 2.75.
_DOCS = ["apple banana", "apple apple cherry", "banana cherry durian",
         "elderberry fig grape"]


def test_hand_checked_order():
  ranked = bm25.bm25_rankings(_DOCS, ["apple", "banana cherry", "grape fig", "kiwi"], 4)
  assert ranked.dtype == np.int32 and ranked.shape == (4, 4)
  np.testing.assert_array_equal(ranked, [
      # tf 2 in doc 1 beats tf 1 in the shorter doc 0; docs 2, 3 lack the term.
      [1, 0, -1, -1],
      # Doc 2 holds both terms; doc 0 and doc 1 one each, with equal idf: the shorter
      # doc 0 first.
      [2, 0, 1, -1],
      [3, -1, -1, -1],
      # No catalogue item holds the term: nothing is ranked.
      [-1, -1, -1, -1]])


def test_parameters_and_ties():
  # b = 0: no length normalisation, so docs 0 and 1 tie for "banana cherry"; the
  # lower index goes first.
  np.testing.assert_array_equal(
      bm25.bm25_rankings(_DOCS, ["banana cherry"], 3, b=0.0), [[2, 0, 1]])
  # k1 = 0: a term scores its idf whatever its frequency and the length, so doc 0
  # (tf 1) ties with doc 1 (tf 2) for "apple".
  np.testing.assert_array_equal(
      bm25.bm25_rankings(_DOCS, ["apple"], 2, k1=0.0), [[0, 1]])
  # k larger than the catalogue pads with -1; k smaller cuts.
  np.testing.assert_array_equal(bm25.bm25_rankings(_DOCS, ["banana cherry"], 6),
                                [[2, 0, 1, -1, -1, -1]])
  np.testing.assert_array_equal(bm25.bm25_rankings(_DOCS, ["banana cherry"], 1), [[2]])
  assert bm25.bm25_rankings(_DOCS, [], 3).shape == (0, 3)


def test_stemming_and_stopwords():
  # Lengths after stopword removal: 2, 2, 3.
  docs = ["cherry pie", "apple tart", "the cherries of spring season"]
  # Snowball stems "cherries" and "cherry" alike; the shorter doc 0 first.
  np.testing.assert_array_equal(bm25.bm25_rankings(docs, ["Cherries!"], 3), [[0, 2, -1]])
  np.testing.assert_array_equal(
      bm25.bm25_rankings(docs, ["Cherries!"], 3, stemming=False), [[2, -1, -1]])
  # Stopwords and one-letter tokens carry nothing.
  np.testing.assert_array_equal(
      bm25.bm25_rankings(docs, ["the of and a", "", "I tart"], 2),
      [[-1, -1], [-1, -1], [1, -1]])


def _lucene_bm25(docs, query, k1, b):
  """Lucene BM25 from its formula, over whitespace tokens."""
  tokens = [doc.split() for doc in docs]
  avgdl = sum(map(len, tokens)) / len(tokens)
  scores = np.zeros(len(docs))
  for term in query.split():
    df = sum(term in doc for doc in tokens)
    idf = math.log(1 + (len(docs) - df + 0.5) / (df + 0.5))
    for i, doc in enumerate(tokens):
      tf = doc.count(term)
      scores[i] += idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * len(doc) / avgdl)) if tf else 0
  return scores


@pytest.mark.parametrize("k1, b", [(0.9, 0.4), (1.2, 0.75)])
def test_matches_the_formula(k1, b):
  rng = np.random.default_rng(0)
  vocab = [f"w{i:02d}" for i in range(12)]  # Not stopwords; unchanged without stemming.
  docs = [" ".join(rng.choice(vocab, rng.integers(1, 9))) for _ in range(40)]
  queries = [" ".join(rng.choice(vocab, rng.integers(1, 4))) for _ in range(25)]
  ranked = bm25.bm25_rankings(docs, queries, 10, k1=k1, b=b, stemming=False)
  for q, query in enumerate(queries):
    scores = _lucene_bm25(docs, query, k1, b)
    expected = [i for i in np.lexsort((np.arange(len(docs)), -scores)) if scores[i] > 0][:10]
    np.testing.assert_array_equal(ranked[q][:len(expected)], expected, err_msg=query)
    assert (ranked[q][len(expected):] == -1).all()


def test_top_k_positive():
  scores = np.array([0.0, 2.0, 1.0, 2.0, -1.0, 1.0, 1.0])
  np.testing.assert_array_equal(bm25.top_k_positive(scores, 3), [1, 3, 2])
  np.testing.assert_array_equal(bm25.top_k_positive(scores, 10), [1, 3, 2, 5, 6])
  np.testing.assert_array_equal(bm25.top_k_positive(np.zeros(4), 2), [])


def test_request_text():
  history = ["Old soap", "Mid shampoo", "New lipstick"]  # Oldest first.
  assert bm25.request_text("red", history, 2) == "red New lipstick Mid shampoo"
  assert bm25.request_text("", history, 5) == "New lipstick Mid shampoo Old soap"
  assert bm25.request_text("red", history, 0) == "red"
  assert bm25.request_text("", [], 3) == ""


@pytest.mark.skipif(not (SHARED_DATA / "scifact").is_dir(),
                    reason="../shared/data/scifact is absent")
def test_scifact_ndcg_matches_beir(tmp_path):
  raw = jsonl_format.read_jsonl_dataset(
      scifact.convert(SHARED_DATA / "scifact", tmp_path / "scifact"))
  index = {item.item_id: i for i, item in enumerate(raw.items)}
  test = raw.splits["test"]
  ranked = bm25.bm25_rankings([item.text for item in raw.items],
                              [r.query for r in test], 10)
  relevant = np.full((len(test), max(len(r.item_ids) for r in test)), -1)
  for q, request in enumerate(test):
    relevant[q, :len(request.item_ids)] = [index[i] for i in request.item_ids]
  ndcg = metrics.retrieval_metrics(ranked, relevant, ks=(10,))["ndcg@10"]
  print(f"BM25 SciFact test nDCG@10 = {ndcg:.4f} (BEIR: 0.665)")
  assert abs(ndcg - 0.665) <= 0.03

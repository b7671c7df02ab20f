"""BM25 baseline through `bm25s` (sparse lexical retrieval; the DGI paper's "BM25" row).

Choices, close to Anserini's Lucene BM25 where bm25s allows:
  * Scoring: Lucene's BM25 variant (bm25s `method="lucene"`, idf = ln(1 + (N - df + 0.5) /
    (df + 0.5))), k1 = 0.9, b = 0.4 (Anserini's defaults).
  * Tokens: bm25s's tokenizer, lower-cased, regex (?u)\\b\\w\\w+\\b (so one-character
    tokens are dropped), bm25s's English stopword list, then (`stemming=True`) the
    Snowball English ("Porter2") stemmer of PyStemmer, as bm25s's own BEIR benchmarks
    do. Anserini stems with the original Porter and has its own stopword list, and
    BEIR's published BM25 ran on Elasticsearch, so numbers differ slightly (SciFact test
    nDCG@10: BEIR 0.665; this module 0.676 on ../shared/data/scifact).
  * Ranking: items without any query term score 0 and are not ranked: their slots are
    -1, the metrics' empty slot, rather than arbitrary zero-score items. A request with no
    scorable token (empty, or stopwords only) therefore ranks nothing. Equal scores are
    ordered by the lower item index (our own top-k over bm25s's scores, so the order
    does not depend on a selection backend).
  * Requests of sequential recommendation have no query text: `request_text` builds the
    query from the query text followed by the titles of the most recent history items,
    newest first, as the DGI paper does for its BM25 baseline.
`bm25s` is imported when ranking, not with this module: importing bm25s initialises JAX
(its top-k backend), which must not happen before `jax.distributed.initialize`.
"""

from typing import Sequence

import numpy as np

from dgi_jax.data import records


def request_text(query: str, history_texts: Sequence[str], max_history: int) -> str:
  """`query`, then the texts of the `max_history` most recent history items, newest first.

  Args:
    query: The request's text ('' in sequential recommendation).
    history_texts: Texts of the history items, oldest first (the dataset's order).
    max_history: How many of the most recent items to use (0: none).

  Returns:
    The parts joined by single spaces, empty parts left out.
  """
  recent = records.recent_history(list(history_texts), max_history)[::-1]
  return " ".join(part for part in (query, *recent) if part)


def bm25_rankings(item_texts: Sequence[str], request_texts: Sequence[str], k: int, *,
                  k1: float = 0.9, b: float = 0.4, stemming: bool = True) -> np.ndarray:
  """The k best items of each request by BM25 (choices in the module docstring).

  Args:
    item_texts: The catalogue's texts; a ranked index is a position in this list.
    request_texts: One query text per request (see `request_text`).
    k: Ranking length.
    k1: Term-frequency saturation.
    b: Document-length normalisation.
    stemming: Snowball English stemming of items and requests.

  Returns:
    int32 [len(request_texts), k] item indices, best first; -1 where fewer than k items
    contain a query term.
  """
  import bm25s  # pylint: disable=g-import-not-at-top
  import Stemmer  # pylint: disable=g-import-not-at-top  (PyStemmer)

  if k < 1:
    raise ValueError(f"k must be >= 1, got {k}")
  if not item_texts:
    raise ValueError("no items to rank")
  stemmer = Stemmer.Stemmer("english") if stemming else None
  retriever = bm25s.BM25(k1=k1, b=b, method="lucene")
  retriever.index(bm25s.tokenize(list(item_texts), stopwords="en", stemmer=stemmer,
                                 show_progress=False), show_progress=False)
  # Token strings, not ids: ids of a separate tokenize call would not be the index's
  # vocabulary. Tokens the catalogue lacks score nothing.
  queries = bm25s.tokenize(list(request_texts), stopwords="en", stemmer=stemmer,
                           return_ids=False, show_progress=False)
  ranked = np.full((len(request_texts), k), -1, np.int32)
  for q, tokens in enumerate(queries):
    if tokens:
      top = top_k_positive(retriever.get_scores(list(tokens)), k)
      ranked[q, :len(top)] = top
  return ranked


def top_k_positive(scores: np.ndarray, k: int) -> np.ndarray:
  """Indices of the (at most) k highest positive scores: best first, ties by lower index."""
  positive = np.flatnonzero(scores > 0)
  if len(positive) > k:
    # The k-th largest score; every index scoring at least that is a candidate, so ties
    # at the cut are decided below by index, not by the partition's arbitrary order.
    kth = np.partition(scores[positive], len(positive) - k)[len(positive) - k]
    positive = positive[scores[positive] >= kth]
  order = np.lexsort((positive, -scores[positive]))  # Last key first: score, then index.
  return positive[order[:k]]

"""BM25 baseline through `bm25s` (sparse retrieval; the paper's Table 2 "BM25").

Choices (BEIR / Anserini-like): lower-cased word tokens, English stopwords, Snowball
(PyStemmer) English stemming, Lucene BM25 with k1 = 0.9, b = 0.4. The request text is the
query followed by the most recent history titles, newest first, as the DGI paper builds
its BM25 queries.
"""

from typing import Sequence

import bm25s
import numpy as np
import Stemmer


def request_text(query: str, history_texts: Sequence[str], max_history: int) -> str:
  """`query` then the `max_history` most recent history texts (given oldest first)."""
  recent = list(history_texts)[::-1][:max(max_history, 0)]
  return " ".join(t for t in [query, *recent] if t)


def bm25_rankings(item_texts: Sequence[str], request_texts: Sequence[str], k: int, *,
                  k1: float = 0.9, b: float = 0.4, stemming: bool = True) -> np.ndarray:
  """Top-k item indices per request by BM25, best first; int32 [Q, k], -1 past the end.

  Requests without a scorable token (e.g. only stopwords) rank nothing (all -1), since
  bm25s would otherwise return arbitrary zero-score items.
  """
  stemmer = Stemmer.Stemmer("english") if stemming else None
  retriever = bm25s.BM25(k1=k1, b=b, method="lucene")
  retriever.index(bm25s.tokenize(list(item_texts), stopwords="en", stemmer=stemmer,
                                 show_progress=False), show_progress=False)
  k_eff = min(k, len(item_texts))
  queries = bm25s.tokenize(list(request_texts), stopwords="en", stemmer=stemmer,
                           return_ids=False, show_progress=False)
  ranked = np.full((len(request_texts), k), -1, np.int32)
  nonempty = [i for i, tokens in enumerate(queries) if tokens]
  if nonempty:
    docs, scores = retriever.retrieve([queries[i] for i in nonempty], k=k_eff,
                                      show_progress=False, n_threads=0)
    docs = np.where(scores > 0, docs, -1)  # Zero score: no query term in the item.
    ranked[nonempty, :k_eff] = docs
  return ranked

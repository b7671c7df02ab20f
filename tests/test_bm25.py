"""BM25 baseline: a hand-checkable ranking, request texts, and BEIR's SciFact number."""

import numpy as np
import pytest

from dgi_jax import metrics
from dgi_jax.baselines import bm25
from dgi_jax.data import jsonl_format
from dgi_jax.data.converters import scifact
from conftest import SHARED_DATA

DOCS = ["red apple pie recipe",
        "green apple",
        "red car engine",
        "apple apple apple orchard harvest"]


def test_ranking_known_order():
  ranked = bm25.bm25_rankings(DOCS, ["red apple", "engine", "the of"], k=4)
  # 'red apple' (k1 .9, b .4, avgdl 3.5; Lucene idf: red ln 2 = .693, apple ln 1.43 =
  # .357): doc 0 has both; doc 2 'red' once, dl 3 -> .693 * 1.03 = .71; doc 3 'apple'
  # three times, dl 5 -> .357 * 1.41 = .50; doc 1 'apple' once, dl 2 -> .357 * 1.09 = .39.
  assert ranked[0].tolist() == [0, 2, 3, 1]
  # 'engine' is only in doc 2; nothing else scores, so the rest is -1 (not arbitrary).
  assert ranked[1].tolist() == [2, -1, -1, -1]
  # Only stopwords: nothing to score.
  assert ranked[2].tolist() == [-1, -1, -1, -1]


def test_stemming_matches_inflections():
  ranked = bm25.bm25_rankings(["harvesting apples", "car engines"], ["harvested"], k=2)
  assert ranked[0, 0] == 0
  unstemmed = bm25.bm25_rankings(["harvesting apples", "car engines"], ["harvested"], k=2,
                                 stemming=False)
  assert unstemmed[0].tolist() == [-1, -1]


def test_request_text_takes_the_most_recent_titles_newest_first():
  assert bm25.request_text("query", ["old", "mid", "new"], 2) == "query new mid"
  assert bm25.request_text("", ["old", "new"], 5) == "new old"
  assert bm25.request_text("q", ["a"], 0) == "q"


@pytest.mark.skipif(not (SHARED_DATA / "scifact").is_dir(), reason="no shared data")
def test_scifact_ndcg_matches_beir(tmp_path):
  raw = jsonl_format.read_jsonl_dataset(scifact.convert(SHARED_DATA / "scifact",
                                                        tmp_path / "scifact"))
  index = {item.item_id: n for n, item in enumerate(raw.items)}
  test = raw.splits["test"]
  ranked = bm25.bm25_rankings([i.text for i in raw.items], [r.query for r in test], k=10)
  relevant = np.full((len(test), 8), -1)
  for row, request in enumerate(test):
    relevant[row, :len(request.item_ids)] = [index[i] for i in request.item_ids]
  ndcg = metrics.retrieval_metrics(ranked, relevant, ks=(10,))["ndcg@10"]
  # BEIR reports 0.665 (Elasticsearch BM25); this setup measures 0.676.
  assert abs(ndcg - 0.665) < 0.03, ndcg

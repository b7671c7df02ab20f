"""eval.popularity_weight: every cosine order of items adds w x ln(1 + f(i)), f(i) the
training requests targeting item i, and nothing else about the rankings changes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dgi_jax import decoding, evaluate, popularity, retrieval, trained_run
from dgi_jax.baselines import dense
from test_decoding import prefix_search


def test_log_popularity_known_answer():
  np.testing.assert_allclose(popularity.log_popularity([0, 1, 3, 99]),
                             [0.0, np.log(2), np.log(4), np.log(100)], rtol=1e-6)
  np.testing.assert_allclose(popularity.item_prior([0, 1, 3], 0.5),
                             [0.0, 0.5 * np.log(2), 0.5 * np.log(4)], rtol=1e-6)
  with pytest.raises(ValueError, match="counts >= 0"):
    popularity.log_popularity([2, -1])


def _items_at(angles):
  return jnp.asarray(np.stack([np.cos(angles), np.sin(angles)], axis=1), jnp.float32)


def test_cosine_ranking_adds_the_prior_to_each_items_cosine():
  # Cosines with the query: 1, .995, .980, .955, .921 (falling with the item's index).
  items = _items_at(np.array([0.0, 0.1, 0.2, 0.3, 0.4]))
  query = jnp.array([[1.0, 0.0]])
  prior = jnp.asarray(popularity.item_prior([0, 0, 0, 0, 100], 0.02))  # Item 4: +.0923.
  np.testing.assert_array_equal(np.asarray(dense.cosine_ranking(query, items, 3, None, prior)),
                                [[4, 0, 1]])
  # 0.01 x ln(101) = .046 lifts item 4 to .967: above item 3 (.955), below item 2 (.980).
  prior = jnp.asarray(popularity.item_prior([0, 0, 0, 0, 100], 0.01))
  np.testing.assert_array_equal(np.asarray(dense.cosine_ranking(query, items, 5, None, prior)),
                                [[0, 1, 2, 4, 3]])
  zero = jnp.zeros(5, jnp.float32)
  np.testing.assert_array_equal(np.asarray(dense.cosine_ranking(query, items, 5, None, zero)),
                                np.asarray(dense.cosine_ranking(query, items, 5)))


@pytest.mark.parametrize("prior, expected", [
    # Without a prior: the cosine order of every item under the three first codes.
    (None, [4, 1, 2, 5, 0, 3]),
    (np.zeros(6), [4, 1, 2, 5, 0, 3]),
    # Item 3 (cosine .362) + .7 = 1.062 ranks first; item 0 (.878) + .1 passes item 5
    # (.955); the others keep their order.
    (np.array([0.1, 0.0, 0.0, 0.7, 0.0, 0.0]), [3, 4, 1, 2, 0, 5]),
])
def test_rank_items_orders_the_candidates_by_cosine_plus_prior(prior, expected):
  inverted, angles, item_emb, beams = prefix_search(1)
  rank = jax.jit(decoding.rank_items, static_argnums=(4, 5, 6, 7),
                 static_argnames="candidate_level")
  items, _, cosines = map(np.asarray, rank(
      beams, inverted, jnp.array([[1.0, 0.0]]), jnp.asarray(item_emb), 6, 0, "cosine", 0.0,
      candidate_level=1, item_prior=None if prior is None else jnp.asarray(prior, jnp.float32)))
  np.testing.assert_array_equal(items[0], expected)
  # The returned cosines stay the items' cosines, the prior left out.
  np.testing.assert_allclose(cosines[0], np.cos(angles[expected]), rtol=1e-6)


@pytest.fixture(scope="module")
def trained(tiny_run):
  return trained_run.load_trained(tiny_run.workdir)


def test_search_diagnostics_and_added_items_read_the_prior(trained):
  config, run_data = trained.config, trained.run_data
  retriever = retrieval.Retriever(trained.model, trained.params, run_data, config)
  retriever.ranking = "cosine"  # The beams choose the candidates; the cosine orders them.
  counts = np.asarray(run_data.dataset.train_popularity)
  assert retriever.popularity_weight == 0.0 and len(set(counts.tolist())) > 2
  before = evaluate.evaluate_split(retriever, run_data, config, "test", beam_size=4, k=20,
                                   keep_rankings=True)
  # A weight far above any cosine gap: the ranking among the same candidates follows
  # the items' popularity.
  retriever.popularity_weight = 100.0
  after = evaluate.evaluate_split(retriever, run_data, config, "test", beam_size=4, k=20,
                                  keep_rankings=True)
  assert after["popularity_weight"] == 100.0 and before["popularity_weight"] == 0.0
  assert (before["candidates"] == after["candidates"]
          and before["candidates"]["mean"] > 20)  # The same beams, more than k candidates.
  changed = 0
  for first, kept in zip(before["rankings"], after["rankings"]):
    kept = kept[kept >= 0]
    assert np.all(np.diff(counts[kept]) <= 0)  # Most popular first.
    changed += first[first >= 0].tolist() != kept.tolist()
  assert changed
  # The encoder's exact ranking, as the dense rows compute it, at the same weight.
  dense_ranked, relevant, _ = dense.dense_rankings(trained.model, trained.params, run_data,
                                                   config, "test", 10, popularity_weight=100.0)
  assert np.all(np.diff(counts[dense_ranked], axis=1) <= 0)
  hit = np.mean([np.isin(r, rel[rel >= 0]).any() for r, rel in zip(dense_ranked, relevant)])
  assert after["encoder"]["dense"]["hit"] == pytest.approx(hit)
  # An item added after training has no training popularity.
  new = retriever.add_items(["a lamp nobody bought"], ["new-lamp"])
  assert retriever.item_log_popularity[new].tolist() == [0.0]
  assert retriever.item_prior().shape == (retriever.num_items,)


@pytest.mark.parametrize("attribute,weights", [("popularity_weight", (0.0, 0.05, 100.0)),
                                               ("cosine_weight", (0.0, 10.0))])
def test_a_sweep_searches_once_and_ranks_as_each_weights_own_evaluation(trained, attribute,
                                                                        weights,
                                                                        monkeypatch):
  """`sweep_split` ranks one search's beams at every weight: each weight's report equals
  `evaluate_split`'s at that weight, and the beam search runs once per batch."""
  config, run_data = trained.config, trained.run_data
  retriever = retrieval.Retriever(trained.model, trained.params, run_data, config)
  retriever.ranking = "blend" if attribute == "cosine_weight" else "cosine"
  searches = []
  search_beams = retriever.search_beams
  monkeypatch.setattr(retriever, "search_beams",
                      lambda *args: searches.append(1) or search_beams(*args))
  swept = evaluate.sweep_split(retriever, run_data, config, "validation", attribute, weights)
  batches = len(searches)
  assert list(swept) == list(weights) and batches > 0
  metrics = []
  for weight in weights:
    setattr(retriever, attribute, weight)
    own = evaluate.evaluate_split(retriever, run_data, config, "validation",
                                  with_diagnostics=False)
    assert swept[weight][attribute] == weight
    for key in ("metrics", "long_tail", "candidates", "index"):
      assert swept[weight][key] == own[key], (weight, key)
    metrics.append(own["metrics"])
  assert len(searches) == batches * (1 + len(weights))  # One search per batch per call.
  assert metrics[0] != metrics[-1]  # The weights rank differently.

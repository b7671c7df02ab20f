"""The retriever of a trained tiny run: existing SIDs, agreement with evaluation, added
items, and the `dgi index` table."""

import functools
import json
import subprocess
import sys

import jax
import numpy as np
import pytest

from dgi_jax import diagnostics, evaluate, index, metrics, retrieval
from dgi_jax import trained_run
from dgi_jax.baselines import dense
from dgi_jax.data import pipeline
from dgi_jax.models import quantizer
from dgi_jax.models.dgi import DGIModel
from conftest import REPO_ROOT

NEW_ITEMS = [("new-lamp", "Aurora brass desk lamp with linen shade, warm white"),
             ("new-tea", "Kyoto sencha green tea, loose leaf, 250 g tin")]


@pytest.fixture(scope="module")
def run_dir(tiny_run):
  """The session's tiny run; these tests only read it."""
  return tiny_run.workdir


@pytest.fixture(scope="module")
def trained(run_dir):
  return trained_run.load_trained(run_dir)


@pytest.fixture(scope="module")
def retriever(trained):
  return retrieval.Retriever(trained.model, trained.params, trained.run_data,
                             trained.config)


def _diagnose(retriever, tokens, target_items, route_width=3, route_budget=0):
  """`diagnostics.diagnose` of request tokens [B, Lq] (history as text), one target item
  [B] each."""
  return jax.device_get(diagnostics.diagnose(
      retriever.model, retriever.params, retriever.device_item_embeddings,
      retriever.sids[:, 0], retriever.encode(np.asarray(tokens, np.int32)),
      retriever.sids[np.asarray(target_items)][:, None], route_width=route_width,
      route_budget=route_budget))


def _test_batches(trained):
  return pipeline.iterate_eval(
      trained.run_data.dataset, trained.run_data.tokenizer, trained.config.data, "test",
      trained.config.eval.batch_size, catalogue_tokens=trained.run_data.catalogue_tokens)


def _first_test_batch(trained):
  return next(_test_batches(trained))


def test_search_returns_existing_sids_and_only_their_items(trained, retriever):
  batch = _first_test_batch(trained)
  result = jax.device_get(retriever.search(batch["query_tokens"], beam_size=5, k=20))
  existing = {tuple(s) for s in retriever.sids}
  beams = result.beams
  assert beams.valid.any()
  assert all(tuple(s) in existing for s in beams.sequences[beams.valid])
  for b in range(len(batch["mask"])):
    score_of = {tuple(s): score for s, score, ok in
                zip(beams.sequences[b], beams.scores[b], beams.valid[b]) if ok}
    items = result.items[b][result.items[b] >= 0]
    assert len(items) and len(set(items.tolist())) == len(items)
    for item, score in zip(items, result.beam_scores[b]):
      assert score == score_of[tuple(retriever.sids[item])]
    # Lexicographic: beam score descending, cosine descending inside one SID.
    keys = list(zip(-result.beam_scores[b][:len(items)], -result.cosines[b][:len(items)]))
    assert keys == sorted(keys)


def test_search_agrees_with_evaluate_split(trained, retriever):
  config, run_data = trained.config, trained.run_data
  report = evaluate.evaluate_split(retriever, run_data, config, "test", beam_size=5,
                                   k=20, keep_rankings=True)
  rankings = report["rankings"]
  num = run_data.dataset.num_examples("test")
  assert rankings.shape == (num, 20) and report["num_requests"] == num
  # The same requests, tokenised from their text, searched as one batch.
  rows = run_data.dataset.source("test").__getitems__(list(range(num)))
  ids = run_data.dataset.item_ids
  first = config.eval.batch_size
  tokens, history = retriever.tokenize_requests(
      [r["query"].decode() for r in rows[:first]],
      [[ids[i] for i in np.asarray(r["history"]).reshape(-1)] for r in rows[:first]])
  np.testing.assert_array_equal(tokens, _first_test_batch(trained)["query_tokens"])
  np.testing.assert_array_equal(history, _first_test_batch(trained)["history"])
  items = np.asarray(retriever.search(tokens, beam_size=5, k=20).items)
  np.testing.assert_array_equal(items, rankings[:first])
  # The reported metrics are those of the rankings.
  relevant = _relevant(run_data)
  expected = metrics.retrieval_metrics(rankings, relevant)
  for name, value in report["metrics"].items():
    assert value == pytest.approx(expected[name]), name
  assert sum(b["count"] for b in report["long_tail"]["buckets"]) == report["num_pairs"]
  assert report["num_pairs"] == int((relevant >= 0).sum())
  # The decoder section covers every (request, relevant item) pair.
  decoder = report["decoder"]
  assert len(decoder["code_cross_entropy"]) == trained.model.cfg.num_levels
  pair_sids = retriever.sids[relevant[relevant >= 0]]
  np.testing.assert_allclose(
      decoder["target_code_entropy"],
      np.log(metrics.code_usage_perplexity(pair_sids, trained.model.cfg.codebook_sizes)))
  # The encoder section: the dense ranking of the same parameters, and prefix agreement
  # that can only fall with depth.
  dense_ranked, _, _ = dense.dense_rankings(trained.model, trained.params, run_data, config,
                                            "test", 10)
  expected_dense = metrics.retrieval_metrics(dense_ranked, relevant, (10,), 10)
  assert report["encoder"]["dense"]["hit"] == pytest.approx(expected_dense["hit@10"])
  agreement = report["encoder"]["sid_prefix_agreement"]
  assert len(agreement) == trained.model.cfg.num_levels
  assert all(1 >= a >= b >= 0 for a, b in zip(agreement, agreement[1:]))
  all_tokens, _ = retriever.tokenize_requests(
      [r["query"].decode() for r in rows],
      [[ids[i] for i in np.asarray(r["history"]).reshape(-1)] for r in rows])
  request_of_pair, pair_items = np.nonzero(relevant >= 0)
  request_codes = _diagnose(retriever, all_tokens, np.zeros(len(rows), int)).request_codes
  same = request_codes[request_of_pair] == retriever.sids[
      relevant[request_of_pair, pair_items]]
  np.testing.assert_allclose(agreement, np.cumprod(same, axis=1).mean(axis=0), atol=1e-12)
  # The spread of the catalogue: every pair's cosine, averaged the slow way.
  unit = retriever.item_embeddings / np.linalg.norm(retriever.item_embeddings, axis=1,
                                                   keepdims=True)
  cosines = (unit @ unit.T)[~np.eye(len(unit), dtype=bool)]
  assert report["encoder"]["item_mean_cosine"] == pytest.approx(cosines.mean(), abs=1e-6)


def test_excluded_history_leaves_the_ranking_otherwise_unchanged(trained, retriever):
  config, run_data = trained.config, trained.run_data
  history = np.asarray(_first_test_batch(trained)["history"])
  assert (history >= 0).any()
  tokens = _first_test_batch(trained)["query_tokens"]
  try:
    reports = {}
    for exclude in (False, True):
      retriever.exclude_history = exclude
      reports[exclude] = evaluate.evaluate_split(retriever, run_data, config, "test",
                                                 beam_size=5, k=20, keep_rankings=True)
    excluded = np.asarray(retriever.search(tokens, beam_size=5, k=20, history=history).items)
  finally:
    retriever.exclude_history = bool(config.eval.exclude_history)
  assert reports[True]["exclude_history"] and not reports[False]["exclude_history"]
  kept, first = reports[True]["rankings"], reports[False]["rankings"]
  np.testing.assert_array_equal(excluded, kept[:len(excluded)])
  changed = 0
  for row, (before, after, drop) in enumerate(zip(first, kept, history.tolist())):
    drop = set(drop)
    assert not drop & set(after.tolist()), row
    # The same beams: the kept ranking starts with the full one's non-history items.
    remaining = [i for i in before.tolist() if i >= 0 and i not in drop]
    assert after.tolist()[:len(remaining)] == remaining, row
    changed += remaining != before[before >= 0].tolist()
  assert changed  # Some history item was ranked before it was left out.
  # The reports count the history items in each ranking, none once they are left out.
  split_history = np.concatenate([batch["history"][batch["mask"]]
                                  for batch in _test_batches(trained)])
  in_history = np.asarray([[i >= 0 and i in set(drop) for i in row]
                           for row, drop in zip(first, split_history.tolist())])
  in_history = in_history[(_relevant(run_data) >= 0).any(axis=1)]
  assert reports[False]["history"]["ranked_in_history"] == pytest.approx(
      in_history.sum(axis=1).mean()) and in_history.any()
  assert reports[False]["history"]["first_in_history"] == pytest.approx(
      in_history[:, 0].mean())
  assert reports[True]["history"]["ranked_in_history"] == 0
  assert (reports[True]["history"]["relevant_in_history"]
          == reports[False]["history"]["relevant_in_history"])
  # The encoder's own cosine ranking leaves the history out too.
  dense_kept, _, _ = dense.dense_rankings(
      trained.model, trained.params, run_data,
      _with_exclude_history(config), "test", 10)
  assert reports[True]["encoder"]["dense"]["hit"] == pytest.approx(
      metrics.retrieval_metrics(dense_kept, _relevant(run_data), (10,), 10)["hit@10"])


def _with_exclude_history(config):
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.eval.exclude_history = True
  return config


def _relevant(run_data):
  """int [Q, R] relevant item indices of the test split, -1 padded."""
  num = run_data.dataset.num_examples("test")
  rows = run_data.dataset.source("test").__getitems__(list(range(num)))
  relevant = np.full((num, run_data.dataset.max_relevant("test")), -1)
  for q, r in enumerate(rows):
    targets = np.asarray(r["relevant"]).reshape(-1)
    relevant[q, :len(targets)] = targets
  return relevant


def test_code_cross_entropy_sums_to_the_beam_score(trained, retriever):
  # Two code paths: the beam search accumulates log-softmax scores level by level; the
  # teacher-forced cross-entropy recomputes them for a given SID in one pass.
  batch = _first_test_batch(trained)
  result = jax.device_get(retriever.search(batch["query_tokens"], beam_size=5, k=20))
  best = result.items[:, 0]
  assert (best >= 0).all()
  cross_entropy = _diagnose(retriever, batch["query_tokens"], best).code_cross_entropy[:, 0]
  assert cross_entropy.shape == (len(best), trained.model.cfg.num_levels)
  assert (cross_entropy >= 0).all()
  np.testing.assert_allclose(-cross_entropy.sum(axis=1), result.beam_scores[:, 0],
                             rtol=1e-5, atol=1e-5)


def test_a_request_made_of_an_item_text_quantizes_to_the_item_sid(trained, retriever):
  # The encoder is shared and pools over non-padding tokens, so an item's tokens sent as
  # a request give the item's own embedding, and the quantizer its SID.
  items = trained.run_data.catalogue_tokens[:64]
  query_len = trained.config.data.max_query_len
  requests = np.pad(items, ((0, 0), (0, query_len - items.shape[1])))
  np.testing.assert_array_equal(_diagnose(retriever, requests, np.arange(64)).request_codes,
                                retriever.sids[:64])


def test_routed_ranking_is_the_cosine_ranking_under_the_nearest_first_codes(trained):
  retriever = retrieval.Retriever(trained.model, trained.params, trained.run_data,
                                  trained.config)
  tokens = _first_test_batch(trained)["query_tokens"][:4]
  apply = functools.partial(retriever.model.apply, {"params": retriever.params})
  z_q = np.asarray(quantizer.l2_normalize(retriever.encode(tokens).z_q))  # Unit items here.
  assert trained.config.model.normalize_item_embedding
  codebook = np.asarray(apply(method=DGIModel.get_codebooks)[0])
  scores = z_q @ codebook.T / np.linalg.norm(codebook, axis=1)  # Cosine geometry.
  first = retriever.sids[:, 0]
  scores[:, ~np.isin(np.arange(len(codebook)), first)] = -np.inf  # Codes holding no item.
  cosines = z_q @ np.asarray(retriever.item_embeddings).T
  for width in (1, 2):
    out = _diagnose(retriever, tokens, np.zeros(len(tokens), int), route_width=width)
    for b in range(len(tokens)):
      codes = np.argsort(-scores[b])[:width]
      assert set(out.routed_codes[b]) == set(codes)
      members = np.flatnonzero(np.isin(first, codes))
      assert out.routed_candidates[b] == len(members)
      expected = members[np.argsort(-cosines[b, members])][:diagnostics.DENSE_K]
      np.testing.assert_array_equal(out.routed_top_k[b][:len(expected)], expected)
      assert np.all(out.routed_top_k[b][len(expected):] == -1)
  # With a budget: of the 4 nearest codes, the fewest holding a tenth of the catalogue.
  budget = retriever.num_items // 10
  out = _diagnose(retriever, tokens, np.zeros(len(tokens), int), route_width=4,
                  route_budget=budget)
  for b in range(len(tokens)):
    kept, held = [], 0
    for code in np.argsort(-scores[b])[:4]:
      if held < budget:
        kept.append(code)
        held += int((first == code).sum())
    assert 1 <= len(kept) < 4
    assert out.routed_codes[b].tolist() == kept + [-1] * (4 - len(kept))
    assert out.routed_candidates[b] == held


def test_mean_pairwise_cosine_known_answer():
  # Pairs: (a, 2a) 1, (a, b) 0, (2a, b) 0, (a, -a) -1, (2a, -a) -1, (b, -a) 0 -> -1 / 6.
  a, b = np.array([1.0, 0.0]), np.array([0.0, 3.0])
  assert diagnostics.mean_pairwise_cosine(np.stack([a, 2 * a, b, -a])) == pytest.approx(-1 / 6)
  # One direction for every item: the collapse the spread reports; a zero row counts 0.
  assert diagnostics.mean_pairwise_cosine(np.stack([a, 5 * a, 0.5 * a])) == pytest.approx(1.0)
  assert diagnostics.mean_pairwise_cosine(np.stack([a, a, 0 * a])) == pytest.approx(1 / 3)
  with pytest.raises(ValueError, match="at least 2"):
    diagnostics.mean_pairwise_cosine(a[None])


def test_decoder_report_is_the_mean_cross_entropy_against_the_code_entropy():
  cross_entropy = np.array([[1.0, 2.0], [3.0, 4.0], [2.0, 0.0], [0.0, 2.0]])
  sids = np.array([[0, 1], [1, 1], [2, 1], [2, 1]])  # Level 1: 1/4, 1/4, 1/2; level 2: one.
  report = diagnostics.decoder_report(cross_entropy, sids, (3, 2))
  entropy = -(2 * 0.25 * np.log(0.25) + 0.5 * np.log(0.5))
  np.testing.assert_allclose(report["code_cross_entropy"], [1.5, 2.0])
  np.testing.assert_allclose(report["target_code_entropy"], [entropy, 0.0], atol=1e-12)
  assert report["level1_information"] == pytest.approx(entropy - 1.5)


def test_candidate_level_ranks_every_item_under_the_best_first_codes(trained):
  retriever = retrieval.Retriever(trained.model, trained.params, trained.run_data,
                                  trained.config)
  retriever.ranking, retriever.candidate_level = "cosine", 1
  tokens = _first_test_batch(trained)["query_tokens"][:4]
  num_items, first_codes = retriever.num_items, np.unique(retriever.sids[:, 0])
  # As many beams as first codes: the search over them is exhaustive.
  wide = jax.device_get(retriever.search(tokens, len(first_codes), num_items))
  narrow = jax.device_get(retriever.search(tokens, 3, num_items))
  np.testing.assert_array_equal(retriever.candidate_counts(wide.beams), num_items)
  np.testing.assert_array_equal(retriever.candidate_counts(narrow.beams),
                                (narrow.items >= 0).sum(axis=1))
  every_item = np.tile(np.arange(-1, num_items), (len(tokens), 1))  # -1: padding.
  under = retriever.under_beams(narrow.beams, every_item)
  for b in range(len(tokens)):
    assert set(every_item[b][under[b]]) == set(narrow.items[b][narrow.items[b] >= 0])
  retriever.candidate_level = 0  # Whole SIDs: the items sharing a beam's SID.
  whole = jax.device_get(retriever.search(tokens, 3, num_items))
  under = retriever.under_beams(whole.beams, every_item)
  for b in range(len(tokens)):
    assert set(every_item[b][under[b]]) == set(whole.items[b][whole.items[b] >= 0])
  retriever.candidate_level = 1
  for b in range(len(tokens)):
    assert sorted(wide.items[b][wide.items[b] >= 0]) == list(range(num_items))
    np.testing.assert_array_equal(narrow.beams.sequences[b, :, 0],
                                  wide.beams.sequences[b, :3, 0])
    assert np.all(narrow.beams.sequences[b, :, 1:] == -1)
    chosen = set(narrow.beams.sequences[b, :, 0].tolist())
    items = narrow.items[b][narrow.items[b] >= 0]
    assert set(items.tolist()) == set(np.flatnonzero(np.isin(retriever.sids[:, 0],
                                                             list(chosen))).tolist())
    assert len(items) < num_items and np.all(np.diff(narrow.cosines[b, :len(items)]) <= 0)


@pytest.mark.parametrize("candidate_level", [0, 1])
def test_candidate_budget_ranks_the_items_of_the_fewest_best_beams(trained,
                                                                   candidate_level):
  retriever = retrieval.Retriever(trained.model, trained.params, trained.run_data,
                                  trained.config)
  retriever.ranking, retriever.candidate_level = "cosine", candidate_level
  tokens = _first_test_batch(trained)["query_tokens"][:4]
  num_items, beam = retriever.num_items, 8
  # A few whole SIDs' items, or a tenth of the catalogue under first codes: fewer than
  # the 8 beams hold.
  budget = 3 if candidate_level == 0 else num_items // 10
  full = jax.device_get(retriever.search(tokens, beam, num_items))
  retriever.candidate_budget = budget
  cut = jax.device_get(retriever.search(tokens, beam, num_items))
  level = candidate_level or retriever.sids.shape[1]
  for b in range(len(tokens)):
    # By hand: the unbudgeted search's beams in order, until they hold `budget` items.
    kept, held = [], 0
    for prefix, valid in zip(full.beams.sequences[b], full.beams.valid[b]):
      if valid and held < budget:
        kept.append(tuple(prefix[:level]))
        held += int(np.all(retriever.sids[:, :level] == prefix[:level], axis=1).sum())
    assert 1 <= len(kept) < beam  # The budget cuts, and keeps at least one beam.
    assert [tuple(p[:level]) for p in cut.beams.sequences[b][cut.beams.valid[b]]] == kept
    assert not np.any(cut.beams.valid[b, len(kept):])
    assert retriever.candidate_counts(cut.beams)[b] == held >= budget
    items = cut.items[b][cut.items[b] >= 0]
    expected = {i for i in range(num_items)
                if tuple(retriever.sids[i, :level]) in set(kept)}
    assert set(items.tolist()) == expected and len(items) == held
    # The same order as the unbudgeted ranking, restricted to the kept candidates.
    assert items.tolist() == [i for i in full.items[b] if i in expected]


def test_sid_ranking_orders_the_candidates_by_their_sids_log_probability(trained):
  retriever = retrieval.Retriever(trained.model, trained.params, trained.run_data,
                                  trained.config)
  retriever.ranking, retriever.candidate_level, retriever.cosine_weight = "sid", 1, 3.0
  tokens = _first_test_batch(trained)["query_tokens"][:4]
  num_items = retriever.num_items
  result = jax.device_get(retriever.search(tokens, 3, num_items))
  # log P(SID | request) of every item from the decoder one level at a time.
  request = retriever.encode(tokens)
  apply = functools.partial(retriever.model.apply, {"params": retriever.params})
  sids = np.broadcast_to(retriever.sids, (len(tokens), *retriever.sids.shape))
  log_prob = 0.0
  for t in range(sids.shape[-1]):
    logits = apply(request.z_q, request.states, request.mask, sids[..., :t],
                   method=DGIModel.prefix_logits)  # [B, N, K_t]
    log_prob += np.take_along_axis(np.asarray(jax.nn.log_softmax(logits)),
                                   sids[..., t:t + 1], axis=-1)[..., 0]
  z_q = np.asarray(quantizer.l2_normalize(request.z_q))
  key = log_prob + 3.0 * z_q @ np.asarray(retriever.item_embeddings).T  # [B, N]
  every_item = np.tile(np.arange(num_items), (len(tokens), 1))
  under = retriever.under_beams(result.beams, every_item)
  for b in range(len(tokens)):
    items = result.items[b][result.items[b] >= 0]
    assert set(items.tolist()) == set(np.flatnonzero(under[b]).tolist())
    assert len(set(map(tuple, retriever.sids[items].tolist()))) > 3  # Not one SID a beam.
    assert np.all(np.diff(key[b, items]) <= 1e-5)
  # The candidates' scores do not depend on how many a decoder pass takes.
  candidates = np.maximum(result.items, 0)
  in_passes = {chunk: np.asarray(retrieval.sid_log_prob_fn(
      apply, request, retriever.inverted_index, chunk)(candidates)) for chunk in (7, 128)}
  np.testing.assert_allclose(in_passes[7], in_passes[128], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(in_passes[7], np.take_along_axis(log_prob, candidates, 1),
                             rtol=1e-4, atol=1e-4)


def test_added_items_are_quantized_and_retrievable(trained):
  retriever = retrieval.Retriever(trained.model, trained.params, trained.run_data,
                                  trained.config)
  old_sids = retriever.sids.copy()
  new = retriever.add_items([t for _, t in NEW_ITEMS], [i for i, _ in NEW_ITEMS])
  np.testing.assert_array_equal(new, [len(old_sids), len(old_sids) + 1])
  np.testing.assert_array_equal(retriever.sids[:len(old_sids)], old_sids)
  tokens = trained.run_data.tokenizer.encode_items(
      [t for _, t in NEW_ITEMS], trained.config.data.max_item_len)
  np.testing.assert_array_equal(retriever.sids[new], retriever.quantize_tokens(tokens)[1])
  inverted = retriever.inverted_index
  leaves = np.asarray(inverted.item_leaf)[new]
  bucket, _ = index.items_for_leaves(inverted, jax.numpy.asarray(leaves))
  for item, row in zip(new, np.asarray(bucket)):
    assert item in row
  # A beam as wide as the number of distinct SIDs makes the search exhaustive, so every
  # indexed item, the new ones included, is a candidate.
  beam = retriever.tables.num_leaves
  for (item_id, text), item in zip(NEW_ITEMS, new):
    hits = retriever.search_text(text, beam_size=beam, k=retriever.num_items)
    found = [h for h in hits if h["item_id"] == item_id]
    assert found and found[0]["sid"] == retriever.sids[item].tolist()
  with pytest.raises(retrieval.ItemError, match="already indexed"):
    retriever.add_items(["again"], [NEW_ITEMS[0][0]])
  with pytest.raises(retrieval.ItemError, match="unknown item id"):
    retriever.search_text("lamp", history=["no-such-item"])


def test_dgi_index_writes_one_valid_sid_per_item(run_dir, retriever, tmp_path):
  new_items = tmp_path / "new_items.jsonl"
  new_items.write_text("".join(json.dumps({"item_id": i, "text": t}) + "\n"
                               for i, t in NEW_ITEMS))
  out = tmp_path / "tables" / "sids.jsonl"
  proc = subprocess.run([sys.executable, "-m", "dgi_jax.main", "index", "--workdir",
                         str(run_dir), "--out", str(out), "--add", str(new_items)],
                        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr
  lines = [json.loads(line) for line in out.read_text().splitlines()]
  assert len(lines) == retriever.num_items + len(NEW_ITEMS)
  assert [l["item_id"] for l in lines] == retriever.item_ids + [i for i, _ in NEW_ITEMS]
  sizes = retriever.model.cfg.codebook_sizes
  for line in lines:
    assert len(line["sid"]) == len(sizes)
    assert all(0 <= c < k for c, k in zip(line["sid"], sizes))
  table = retrieval.read_sid_table(out)
  for item_id, sid in zip(retriever.item_ids, retriever.sids.tolist()):
    assert table[item_id] == sid
  assert sorted(p.name for p in out.parent.iterdir()) == ["sids.jsonl"]  # No temp files.


def test_validation_can_skip_the_diagnostics(trained, retriever):
  args = (retriever, trained.run_data, trained.config, "validation")
  full = evaluate.evaluate_split(*args)
  lean = evaluate.evaluate_split(*args, with_diagnostics=False)
  assert {"decoder", "encoder"} <= set(full) and not {"decoder", "encoder"} & set(lean)
  assert lean["metrics"] == full["metrics"]
  # Only candidates are ranked: candidate recall bounds every recall@K.
  assert 0 < full["metrics"]["recall@20"] <= full["candidates"]["recall"] <= 1
  assert 0 < full["candidates"]["mean"] <= retriever.num_items  # Beams hold distinct SIDs.
  flat_full, flat_lean = evaluate.flat_metrics(full), evaluate.flat_metrics(lean)
  assert set(flat_full) - set(flat_lean) == {"level1_information", "encoder_dense_hit@10",
                                             "routed_hit@10", "item_mean_cosine"}
  assert all(flat_lean[name] == flat_full[name] for name in flat_lean)

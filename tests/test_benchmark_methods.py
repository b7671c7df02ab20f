"""The pieces the benchmark's methods are built from: a separate item tower, frozen
parameter groups, method configs, the generic ranking report and dense retrieval."""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dgi_jax import evaluate, optim, run_setup, train, train_step
from dgi_jax.baselines import dense
from dgi_jax.benchmark import methods
from dgi_jax.data import pipeline
from dgi_jax.models.dgi import DGIModel
from conftest import load_config
import model_fixtures


def test_separate_item_tower_reads_only_item_encoder_params():
  model = model_fixtures.small_model(separate_item_encoder=True)
  batch = model_fixtures.random_batch()
  params = model_fixtures.init(model, batch)
  assert {"encoder", "item_encoder"} <= set(params)
  z_items = model.apply({"params": params}, batch["item_tokens"],
                        method=DGIModel.embed_items)
  z_q = model.apply({"params": params}, batch["query_tokens"],
                    method=DGIModel.encode_requests).z_q
  moved = dict(params, item_encoder=jax.tree.map(lambda p: p + 0.1, params["item_encoder"]))
  z_items_moved = model.apply({"params": moved}, batch["item_tokens"],
                              method=DGIModel.embed_items)
  z_q_moved = model.apply({"params": moved}, batch["query_tokens"],
                          method=DGIModel.encode_requests).z_q
  assert not np.allclose(z_items, z_items_moved)
  np.testing.assert_array_equal(z_q, z_q_moved)


def test_shared_tower_has_one_encoder():
  model = model_fixtures.small_model()
  params = model_fixtures.init(model, model_fixtures.random_batch())
  assert "item_encoder" not in params and model.item_encoder_name == "encoder"


@pytest.mark.parametrize("separate", [False, True])
def test_frozen_groups_get_no_update_and_the_rest_trains(tiny_config, separate):
  config = tiny_config
  with config.unlocked():
    config.model.separate_item_encoder = separate
    config.optim.frozen = ("item_encoder", "codebook_") if separate else ("codebook_",)
  model = run_setup.build_model(config)
  params = run_setup.init_params(model, config, jax.random.PRNGKey(0))
  optimizer = optim.make_optimizer(config.optim, 10)
  state = train_step.create_train_state(params, optimizer)
  step = jax.jit(train_step.make_train_step(model, optimizer, config, 10))
  rs = np.random.RandomState(0)
  batch = dict(item_tokens=rs.randint(1, 500, (16, 16)).astype(np.int32),
               query_tokens=rs.randint(1, 500, (16, 32)).astype(np.int32),
               item_index=np.arange(16, dtype=np.int32),
               example_id=np.arange(16, dtype=np.int32))
  for _ in range(3):
    state, metrics = step(state, batch, jax.random.PRNGKey(1))
  assert np.isfinite(metrics["total"])
  for name, before in params.items():
    after = state.params[name]
    same = all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(before),
                                                   jax.tree.leaves(after)))
    assert same == optim.is_frozen(name, config.optim), name


def test_method_config_applies_overrides_and_rejects_unknown_fields(tiny_config):
  from dgi_jax.benchmark import runner  # pylint: disable=g-import-not-at-top
  with tiny_config.unlocked():
    tiny_config.benchmark = {"two_stage_stage1_fraction": 0.3}
  two_stage = methods.BY_NAME["two_stage"]
  stage2 = runner.method_config(runner.method_config(tiny_config, two_stage.overrides),
                                two_stage.stage2_overrides, **{"train.num_steps": 7})
  assert stage2.model.geometry == "dot" and not stage2.model.tie_heads
  assert stage2.model.separate_item_encoder and stage2.loss.ntp_weight == 1.0
  assert stage2.loss.infonce_weight == 0.0 and stage2.train.num_steps == 7
  assert tuple(stage2.optim.frozen) == ("item_encoder", "codebook_", "gamma_quantizer")
  assert tiny_config.model.geometry == "cosine"  # The base is left alone.
  with pytest.raises(KeyError, match="model.no_such_field"):
    runner.method_config(tiny_config, {"model.no_such_field": 1})


def test_two_stage_on_a_pretrained_encoder_quantizes_frozen_item_embeddings(tiny_config):
  from dgi_jax.benchmark import runner  # pylint: disable=g-import-not-at-top
  two_stage = methods.BY_NAME["two_stage"]
  scratch = runner.method_config(tiny_config, two_stage.config_overrides(pretrained=False))
  stage1 = runner.method_config(tiny_config, two_stage.config_overrides(pretrained=True))
  # From scratch stage 1 trains the item tower with InfoNCE; on a pre-trained encoder the
  # tower keeps its weights and only the quantizer's losses train.
  assert scratch.loss.infonce_weight > 0 and not scratch.optim.frozen
  assert stage1.loss.infonce_weight == 0.0 and tuple(stage1.optim.frozen) == ("item_encoder",)
  assert stage1.loss.ntp_weight == 0.0 and stage1.model.separate_item_encoder
  stage2 = runner.method_config(stage1, two_stage.stage2_overrides)
  assert tuple(stage2.optim.frozen) == ("item_encoder", "codebook_", "gamma_quantizer")
  # Methods without pre-trained overrides train the same way on either encoder.
  dgi = methods.BY_NAME["dgi"]
  assert dgi.config_overrides(True) == dgi.config_overrides(False) == dgi.overrides


def test_dataset_directory_is_absolute(tmp_path, monkeypatch):
  # Each method's saved config names it, and `dgi eval` may run from anywhere.
  from dgi_jax.benchmark import runner  # pylint: disable=g-import-not-at-top
  (tmp_path / "logs").mkdir()
  monkeypatch.chdir(tmp_path)
  assert runner.dataset_directory("logs", None, "w", {}) == str(tmp_path / "logs")
  with pytest.raises(FileNotFoundError, match="nowhere"):
    runner.dataset_directory("nowhere", None, "w", {})


def test_select_methods():
  assert methods.select("all") == methods.METHODS
  assert [m.name for m in methods.select("dgi_ste, bm25,dgi_ste")] == ["dgi_ste", "bm25"]
  with pytest.raises(ValueError, match="nope"):
    methods.select("dgi,nope")
  table_names = set(methods.TABLE_2) | set(methods.TABLE_3)
  assert table_names == set(methods.BY_NAME)


def test_ranking_report_known_answer():
  ranked = np.array([[3, 1, 2], [0, 2, 1], [1, 0, 3]])
  relevant = np.array([[1, -1], [3, -1], [0, 2]])
  popularity = np.array([5, 9, 0, 1])
  report = evaluate.ranking_report(ranked, relevant, popularity, num_buckets=2)
  m = report["metrics"]
  assert report["num_requests"] == 3 and report["num_pairs"] == 4
  assert set(k for k in m if k.startswith("hit@")) == {"hit@1"}  # Only @K <= k = 3.
  np.testing.assert_allclose(m["hit@1"], 0.0)
  # First relevant rank: 2, none, 2 -> MRR@3 = (1/2 + 0 + 1/2) / 3.
  np.testing.assert_allclose(m["mrr@3"], 1 / 3)
  # Pairs by popularity: 9 hit, 5 hit | 1 miss, 0 miss (item 2 is never ranked).
  assert [b["hit@10"] for b in report["long_tail"]["buckets"]] == [1.0, 0.0]
  assert report["long_tail"]["unseen"] == {"count": 1, "hit@10": 0.0}


def test_dense_rankings_match_brute_force_cosine(tmp_path):
  config = load_config("tiny")
  with config.unlocked():
    config.data.tfds_dir = str(tmp_path / "tfds")
    config.train.num_steps = 2
  run_data = run_setup.prepare_run_data(config, tmp_path)
  model = run_setup.build_model(config)
  params = run_setup.init_params(model, config, jax.random.PRNGKey(3))
  ranked, relevant, _ = dense.dense_rankings(model, params, run_data, config, "test", k=7)
  assert ranked.shape == (run_data.dataset.num_examples("test"), 7)
  items = run_setup.embed_items(model, params, run_data.catalogue_tokens)
  items = items / np.linalg.norm(items, axis=-1, keepdims=True)
  batch = next(pipeline.iterate_eval(run_data.dataset, run_data.tokenizer, config.data,
                                     "test", 8, catalogue_tokens=run_data.catalogue_tokens))
  z_q = model.apply({"params": params}, jnp.asarray(batch["query_tokens"]),
                    method=DGIModel.encode_requests).z_q
  z_q = np.asarray(z_q) / np.linalg.norm(z_q, axis=-1, keepdims=True)
  expected = np.argsort(-(z_q @ items.T), axis=-1, kind="stable")[:, :7]
  np.testing.assert_array_equal(ranked[:8], expected)
  np.testing.assert_array_equal(relevant[:8], batch["relevant"])


def test_kmeans_gives_untied_heads_their_own_buffers(tiny_config):
  with tiny_config.unlocked():
    tiny_config.model.tie_heads = False
  model = run_setup.build_model(tiny_config)
  params = run_setup.init_params(model, tiny_config, jax.random.PRNGKey(0))
  tokens = np.random.RandomState(0).randint(1, 500, (300, 16)).astype(np.int32)
  params = run_setup.kmeans_init_codebooks(model, params, tokens, tiny_config,
                                       jax.random.PRNGKey(1))
  for t in range(3):
    head, codebook = params[f"head_{t}"], params[f"codebook_{t}"]
    np.testing.assert_array_equal(head, codebook)  # Same start ...
    # ... in separate buffers: the donated train state may not hold one buffer twice.
    assert head.unsafe_buffer_pointer() != codebook.unsafe_buffer_pointer()


def test_interrupted_stage_stops_the_method_and_a_rerun_finishes_it(tiny_config, tmp_path,
                                                                     monkeypatch):
  """A SIGTERM'd warm-up must not start the main stage from an unfinished encoder."""
  from dgi_jax.benchmark import finished_runs, runner  # pylint: disable=g-import-not-at-top
  config = tiny_config
  with config.unlocked():
    config.benchmark = load_config("benchmark", "scratch").benchmark
    config.train.num_steps = 10  # Warm-up 3 steps, main run 7.
    config.train.checkpoint_every = 5
    config.data.tfds_dir = str(tmp_path / "tfds")
  real = train.train_and_evaluate
  calls = []

  def stopped_early(cfg, workdir, **kwargs):  # What a SIGTERM after step 1 leaves.
    calls.append(pathlib.Path(workdir).name)
    return real(cfg, workdir, stop_at_step=1)
  monkeypatch.setattr(train, "train_and_evaluate", stopped_early)
  with pytest.raises(runner.BenchmarkInterrupted, match="stopped at step 1 of 3"):
    runner.run_method(methods.BY_NAME["dgi"], config, tmp_path)
  assert calls == ["warmup"]  # The main stage never started ...
  assert finished_runs.read_result(tmp_path, "dgi") is None  # ... and nothing was reported.
  monkeypatch.setattr(train, "train_and_evaluate", real)
  result = runner.run_method(methods.BY_NAME["dgi"], config, tmp_path)
  assert finished_runs.read_result(tmp_path, "dgi")["report"] == result["report"]

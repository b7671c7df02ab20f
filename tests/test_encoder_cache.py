"""The frozen encoder's cache: when it applies, that its rows are the model's own encoding,
and that training from it follows the uncached run step for step (jit and pmap, resumed;
not built when no steps are left or memory is short)."""

import jax
import numpy as np
import pytest

from dgi_jax import (checkpointing, encoder_cache, evaluate, kmeans, metrics_log, retrieval,
                     run_setup, train)
from dgi_jax.data import pipeline
from dgi_jax.models import encoders, pretrained
from dgi_jax.models.dgi import DGIModel
from run_fixtures import tiny_config

STEPS = 10


def _frozen_config(tfds_dir, **train_fields):
  config = tiny_config(tfds_dir, num_steps=STEPS, checkpoint_every=5, **train_fields)
  with config.unlocked():
    config.optim.frozen = ("encoder",)  # The whole tower: embeddings to the final LayerNorm.
    # The cache encodes 4 x 4 requests a batch, shortest first: the first batches fit in
    # fewer than the 32 tokens, so the cached states come at more than one width.
    config.eval.batch_size = 4
  return config


def _model_params(config):
  model = run_setup.build_model(config)
  return model, run_setup.init_params(model, config, jax.random.PRNGKey(0))


def _request_tokens(run_data, config):
  """The rows a training run's cache encodes (and its key hashes)."""
  return encoder_cache.training_request_tokens(run_data, config,
                                               encoder_cache.request_batch_size(config))


def test_only_a_constant_encoder_is_cached(tmp_path):
  config = _frozen_config(tmp_path)
  model, params = _model_params(config)
  assert encoder_cache.use_cache(model, params, config)

  def variant(**fields):
    changed = _frozen_config(tmp_path)
    with changed.unlocked():
      for path, value in fields.items():
        section, name = path.split("__")
        changed[section][name] = value
    return changed

  # The bottom layers frozen, the final LayerNorm trained: not constant.
  partly = variant(optim__frozen=(), optim__freeze_encoder_layers=1)
  assert not encoder_cache.encoder_is_constant(*_model_params(partly), partly)
  for fields in ({"model__dropout_rate": 0.1},  # Each step draws its own dropout.
                 {"data__history_repr": "embedding"},  # Its projection trains.
                 {"train__cache_frozen_encoder": False}):
    changed = variant(**fields)
    assert not encoder_cache.use_cache(*_model_params(changed), changed), fields


def test_cached_rows_are_the_models_own_encoding(tmp_path, monkeypatch):
  config = _frozen_config(tmp_path, encoder_cache_dtype="float32")
  model, params = _model_params(config)
  run_data = run_setup.prepare_run_data(config, tmp_path / "run")
  widths = []
  encode = run_setup.encode_requests

  def recording_encode(model, params, query_tokens):
    widths.append(query_tokens.shape[1])
    return encode(model, params, query_tokens)

  monkeypatch.setattr(run_setup, "encode_requests", recording_encode)
  cache = encoder_cache.build(model, params, run_data, config,
                              _request_tokens(run_data, config), show_progress=False)
  # Some batches were encoded narrower than the rows they fill, some at full width.
  assert min(widths) < config.data.max_query_len == max(widths)
  num_requests = run_data.dataset.num_examples("train")
  assert cache.request_states.shape[0] == num_requests
  assert cache.nbytes == encoder_cache.cache_bytes(run_data.dataset.num_items, num_requests,
                                                   config, model.cfg.d_model)

  batch = next(pipeline.make_train_iterator(run_data.dataset, run_data.tokenizer,
                                            config.data, 16, seed=3,
                                            catalogue_tokens=run_data.catalogue_tokens))
  filled = cache.fill(batch)
  assert "query_tokens" not in filled and "item_tokens" not in filled
  np.testing.assert_array_equal(filled["example_id"], batch["example_id"])
  apply = lambda *args, **kw: model.apply({"params": params}, *args, **kw)  # noqa: E731
  request = apply(batch["query_tokens"], method=DGIModel.encode_requests)
  np.testing.assert_array_equal(filled["request_mask"], request.mask)
  # Encoded at their batch's width (shortest requests first): the states agree at the
  # real tokens; the padding, which the decoder masks out, may differ.
  real = request.mask
  np.testing.assert_allclose(filled["request_states"][real], np.asarray(request.states)[real],
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(filled["request_vector"], request.z_q, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(filled["item_embedding"],
                             apply(batch["item_tokens"], method=DGIModel.embed_items),
                             rtol=1e-5, atol=1e-6)


def _train(config, workdir, stop_at_step=None):
  train.train_and_evaluate(config, workdir, stop_at_step=stop_at_step)
  return _params_and_timing(workdir)


def _params_and_timing(workdir):
  checkpointer = checkpointing.Checkpointer(workdir, read_only=True)
  params = checkpointer.read_params()
  checkpointer.close()
  return params, metrics_log.read_timing(workdir)


@pytest.fixture(scope="module")
def uncached(tmp_path_factory):
  root = tmp_path_factory.mktemp("uncached")
  return _train(_frozen_config(root / "tfds", cache_frozen_encoder=False), root / "run")


@pytest.mark.parametrize("parallelism", ["jit", "pmap"])
def test_cached_training_follows_the_uncached_run(uncached, tmp_path, parallelism):
  config = _frozen_config(tmp_path / "tfds", encoder_cache_dtype="float32",
                          parallelism=parallelism)
  params, timing = _train(config, tmp_path / "run")
  uncached_params, uncached_timing = uncached
  assert timing["seconds"]["encoder_cache"] > 0  # The steps read the cache ...
  assert uncached_timing["seconds"]["encoder_cache"] == 0
  compared = 0
  for name in ("codebook_0", "codebook_2", "gamma_quantizer", "decoder"):
    cached_leaves = dict(jax.tree_util.tree_leaves_with_path(params[name]))
    for path, reference in jax.tree_util.tree_leaves_with_path(uncached_params[name]):
      leaf = jax.tree_util.keystr(path)
      # An attention key projection's bias adds one constant to a query's scores, which
      # the softmax ignores: its true gradient is zero, so Adam moves it by rounding noise
      # (normalised to about the learning rate) in whichever direction that noise points.
      if leaf.endswith("['key']['bias']"):
        continue
      np.testing.assert_allclose(cached_leaves[path], reference, rtol=2e-4, atol=2e-5,
                                 err_msg=name + leaf)
      compared += 1
  assert compared > 10
  # ... and the frozen encoder is where it started.
  jax.tree.map(np.testing.assert_array_equal, params["encoder"], uncached_params["encoder"])
  initial = _model_params(config)[1]["decoder"]
  moved = max(np.abs(a - b).max() for a, b in zip(jax.tree.leaves(params["decoder"]),
                                                  jax.tree.leaves(initial)))
  assert moved > 1e-3  # The comparison is not between two untrained decoders.


def test_a_resumed_cached_run_equals_an_uninterrupted_one(tmp_path):
  config = _frozen_config(tmp_path / "tfds")  # The default bfloat16 cache.
  whole, _ = _train(config, tmp_path / "whole")
  _train(config, tmp_path / "parts", stop_at_step=5)
  resumed, timing = _train(config, tmp_path / "parts")
  assert timing["first_step"] == 5
  jax.tree.map(np.testing.assert_array_equal, resumed, whole)
  # A finished run has no steps left: nothing is encoded.
  again = train.train_and_evaluate(config, tmp_path / "parts")
  assert again.step == STEPS and again.timing["seconds"]["encoder_cache"] == 0


def test_a_cache_larger_than_half_the_free_memory_is_not_built(uncached, tmp_path,
                                                               monkeypatch):
  monkeypatch.setattr(encoder_cache, "available_memory_bytes", lambda: 2**20)
  params, timing = _train(_frozen_config(tmp_path / "tfds"), tmp_path / "run")
  assert timing["seconds"]["encoder_cache"] == 0
  jax.tree.map(np.testing.assert_array_equal, params, uncached[0])  # The uncached steps.


def _count_builds(monkeypatch):
  """A list that grows by one each time a run builds an `EncoderCache`."""
  builds = []
  build = encoder_cache.build

  def counting_build(*args, **kwargs):
    builds.append(True)
    return build(*args, **kwargs)

  monkeypatch.setattr(encoder_cache, "build", counting_build)
  return builds


def test_a_later_run_on_the_same_frozen_encoder_takes_the_held_cache(tmp_path, monkeypatch):
  """The benchmark trains its methods one after another in one process: a run whose
  frozen weights and data equal an earlier run's reads the cache that run built, and ends
  where it ends when it builds its own; other frozen weights build a new one."""
  builds = _count_builds(monkeypatch)
  config = _frozen_config(tmp_path / "tfds")
  _train(config, tmp_path / "first")
  untied = _frozen_config(tmp_path / "tfds")
  with untied.unlocked():  # Another method: only what trains differs.
    untied.model.tie_heads = False
  held, _ = _train(untied, tmp_path / "held")
  assert len(builds) == 1
  encoder_cache.release_held()
  fresh, _ = _train(untied, tmp_path / "fresh")
  assert len(builds) == 2
  jax.tree.map(np.testing.assert_array_equal, held, fresh)
  reseeded = _frozen_config(tmp_path / "tfds", seed=1)  # Another initial encoder.
  _train(reseeded, tmp_path / "reseeded")
  assert len(builds) == 3


def test_a_cache_saved_on_disk_serves_a_later_process(tmp_path, monkeypatch):
  """With train.encoder_cache_dir, a run in a new process (the held cache released) maps
  the saved cache back instead of building, and ends where the first run ended; a run on
  other frozen weights builds and replaces it."""
  builds = _count_builds(monkeypatch)
  disk = tmp_path / "cache"
  config = _frozen_config(tmp_path / "tfds", encoder_cache_dir=str(disk))
  first, _ = _train(config, tmp_path / "first")
  saved = [p.name for p in disk.iterdir()]
  assert len(builds) == 1 and len(saved) == 1
  assert (disk / saved[0]).stat().st_mode & 0o777 == 0o755  # Not mkdtemp's private 0700.
  encoder_cache.release_held()  # As a new process starts.
  second, _ = _train(config, tmp_path / "second")
  assert len(builds) == 1
  assert isinstance(encoder_cache.take_held(saved[0]).request_states, np.memmap)
  jax.tree.map(np.testing.assert_array_equal, first, second)
  (disk / f".{'0' * 40}.killed").mkdir()  # A write that never finished.
  encoder_cache.release_held()
  _train(_frozen_config(tmp_path / "tfds", seed=1, encoder_cache_dir=str(disk)),
         tmp_path / "reseeded")
  assert len(builds) == 2
  remaining = [p.name for p in disk.iterdir()]
  assert len(remaining) == 1 and remaining != saved


def test_the_cache_fingerprint_reads_frozen_weights_and_tokens_only(tmp_path):
  config = _frozen_config(tmp_path / "tfds")
  with config.unlocked():  # The embeddings and the one layer frozen, the final LayerNorm
    # trained.
    config.optim.frozen = ()
    config.optim.freeze_encoder_layers = 1
  model, params = _model_params(config)
  items, requests = np.arange(12, dtype=np.int32).reshape(3, 4), np.ones((5, 6), np.int32)
  key = encoder_cache.fingerprint("bottom", model, params, config, items, requests)

  def with_added(path, value):
    changed = jax.tree_util.tree_map_with_path(
        lambda p, x: x + value if jax.tree_util.keystr(p) == path else x, params)
    return encoder_cache.fingerprint("bottom", model, changed, config, items, requests)

  assert with_added("['encoder']['ln_final']['scale']", 1.0) == key  # Trained.
  assert with_added("['decoder']['layers_0']['mlp']['wo']['kernel']", 1.0) == key
  assert with_added("['encoder']['layers_0']['mlp']['wo']['kernel']", 1e-6) != key  # Frozen.
  assert with_added("['encoder']['token_embed']['embedding']", 1e-6) != key
  changed_requests = requests.copy()
  changed_requests[4, 5] = 2
  assert encoder_cache.fingerprint("bottom", model, params, config, items,
                                   changed_requests) != key
  assert encoder_cache.fingerprint("outputs", model, params, config, items,
                                   requests) != key


def test_kmeans_of_a_new_cached_run_reads_the_cached_item_embeddings(tmp_path, monkeypatch):
  """A new run with the cache embeds the catalogue once, for the cache: k-means clusters
  the cache's rows of its sample, the embeddings an uncached run computes for it."""

  def first_step_recording(cache_frozen_encoder):
    embedded, clustered = [], []  # Rows per catalogue pass; k-means' input.
    with monkeypatch.context() as patch:
      patch.setattr(run_setup, "embed_items",
                    lambda model, params, tokens, *args, embed=run_setup.embed_items:
                    embedded.append(len(tokens)) or embed(model, params, tokens, *args))
      patch.setattr(kmeans, "residual_kmeans",
                    lambda x, *args, cluster=kmeans.residual_kmeans:
                    clustered.append(np.asarray(x)) or cluster(x, *args))
      config = _frozen_config(tmp_path / "tfds", encoder_cache_dtype="float32",
                              cache_frozen_encoder=cache_frozen_encoder, kmeans_items=40)
      train.train_and_evaluate(config, tmp_path / f"run_{cache_frozen_encoder}",
                               stop_at_step=1)
    return embedded, clustered

  embedded, clustered = first_step_recording(cache_frozen_encoder=True)
  uncached_embedded, uncached_clustered = first_step_recording(cache_frozen_encoder=False)
  assert uncached_embedded == [40]  # k-means embeds its sample ...
  # ... which the cached run takes from the cache, built over the whole catalogue.
  assert len(embedded) == 1 and embedded[0] > 40
  assert len(clustered) == len(uncached_clustered) == 1
  np.testing.assert_allclose(clustered[0], uncached_clustered[0], rtol=1e-6, atol=1e-7)


def test_validation_indexes_the_cached_item_embeddings(tmp_path, monkeypatch):
  """With the cache, each validation pass quantizes the cached catalogue embeddings instead
  of running the item encoder again, and scores as the index built from tokens does."""
  config = _frozen_config(tmp_path / "tfds", encoder_cache_dtype="float32", eval_every=5)
  validate = evaluate.make_validation_fn(config)
  model = run_setup.build_model(config)
  passes = []

  def evaluate_fn(params, run_data, item_embeddings):
    assert item_embeddings is not None
    np.testing.assert_allclose(
        item_embeddings, run_setup.embed_items(model, params, run_data.catalogue_tokens),
        rtol=1e-6)
    with monkeypatch.context() as patch:  # The item encoder must not run.
      patch.setattr(retrieval, "_embed_and_quantize", None)
      from_cache = retrieval.Retriever(model, params, run_data, config, item_embeddings)
      metrics = validate(params, run_data, item_embeddings)
    from_tokens = retrieval.Retriever(model, params, run_data, config)
    np.testing.assert_array_equal(from_cache.sids, from_tokens.sids)
    np.testing.assert_array_equal(from_cache.item_embeddings, from_tokens.item_embeddings)
    assert metrics == validate(params, run_data)
    passes.append(metrics)
    return metrics

  train.train_and_evaluate(config, tmp_path / "run", evaluate_fn=evaluate_fn)
  assert len(passes) == STEPS // 5


def _bottom_config(tfds_dir, **train_fields):
  """all-MiniLM-L6-v2 with its embeddings and bottom 4 of 6 layers frozen."""
  config = tiny_config(tfds_dir, num_steps=6, checkpoint_every=6, **train_fields)
  with config.unlocked():
    config.model.encoder = "bert"
    config.model.pretrained = pretrained.bundled_minilm_dir()
    config.optim.freeze_encoder_layers = 4
    config.optim.backbone_lr = 1e-4  # The top layers visibly move.
    config.eval.batch_size = 4  # Bottom batches at several widths, as above.
  return config


@pytest.mark.parametrize("parallelism", ["jit", "pmap"])
def test_training_from_the_cached_bottom_follows_the_uncached_run(tmp_path, parallelism):
  """A partly frozen BERT encoder: the steps run its top layers from the cached bottom
  layers' output and end where the uncached steps end (float32 cache)."""
  config = _bottom_config(tmp_path / "tfds", encoder_cache_dtype="float32",
                          parallelism=parallelism, eval_every=3)
  model = run_setup.build_model(encoders.resolve_pretrained(config))
  validated = []

  def evaluate_fn(params, run_data, item_embeddings):
    # The catalogue through the top layers from the cached bottom, under the step's
    # params, is the catalogue through the whole encoder.
    np.testing.assert_allclose(
        item_embeddings, run_setup.embed_items(model, params, run_data.catalogue_tokens),
        rtol=1e-5, atol=1e-6)
    validated.append(True)
    return {"hit@10": 0.0}

  train.train_and_evaluate(config, tmp_path / "cached", evaluate_fn=evaluate_fn)
  assert len(validated) == 2
  cached, timing = _params_and_timing(tmp_path / "cached")
  uncached, uncached_timing = _train(
      _bottom_config(tmp_path / "tfds", cache_frozen_encoder=False,
                     parallelism=parallelism), tmp_path / "uncached")
  assert timing["seconds"]["encoder_cache"] > 0
  assert uncached_timing["seconds"]["encoder_cache"] == 0
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5),
               cached, uncached)
  initial = pretrained.load_params(pretrained.bundled_minilm_dir(),
                                   pretrained.read_spec(pretrained.bundled_minilm_dir()))
  moved = np.abs(cached["encoder"]["layer_5"]["output"]["kernel"]
                 - initial["layer_5"]["output"]["kernel"]).max()
  assert moved > 1e-5  # The top layers trained, through the cached bottom.
  jax.tree.map(np.testing.assert_array_equal, cached["encoder"]["layer_3"],
               initial["layer_3"])


def test_bottom_cache_rows_are_the_frozen_layers_output(tmp_path):
  config = encoders.resolve_pretrained(_bottom_config(tmp_path / "tfds",
                                                      encoder_cache_dtype="float32"))
  model = run_setup.build_model(config)
  params = encoders.load_pretrained_params(
      run_setup.init_params(model, config, jax.random.PRNGKey(0)), model.cfg,
      config.model.pretrained)
  assert encoder_cache.use_bottom_cache(model, params, config)
  assert not encoder_cache.use_cache(model, params, config)
  run_data = run_setup.prepare_run_data(config, tmp_path / "run")
  cache = encoder_cache.build_bottom(model, params, run_data, config,
                                     _request_tokens(run_data, config), show_progress=False)
  num_items, num_requests = run_data.dataset.num_items, run_data.dataset.num_examples("train")
  assert cache.num_layers == 4 and len(cache.request_hidden) == num_requests
  # Saved and mapped back: the same arrays, dtypes and layer count.
  key = "0" * 40
  encoder_cache.save(cache, tmp_path / "disk", key)
  loaded = encoder_cache.load(tmp_path / "disk", key)
  assert loaded.num_layers == cache.num_layers
  for name in ("item_hidden", "item_masks", "request_hidden", "request_masks"):
    assert getattr(loaded, name).dtype == getattr(cache, name).dtype
    np.testing.assert_array_equal(getattr(loaded, name), getattr(cache, name))
  assert encoder_cache.load(tmp_path / "disk", "1" * 40) is None
  assert cache.nbytes == encoder_cache.bottom_cache_bytes(
      num_items, run_data.catalogue_tokens.shape[1], num_requests, config, model.cfg.d_model)

  batch = next(pipeline.make_train_iterator(run_data.dataset, run_data.tokenizer,
                                            config.data, 16, seed=3,
                                            catalogue_tokens=run_data.catalogue_tokens))
  filled = cache.fill(batch)
  assert "query_tokens" not in filled and "item_tokens" not in filled
  for tokens, hidden, mask in ((batch["query_tokens"], "request_bottom", "request_bottom_mask"),
                               (batch["item_tokens"], "item_bottom", "item_bottom_mask")):
    x, want_mask = model.apply({"params": params}, tokens, 4, method=DGIModel.encoder_bottom)
    np.testing.assert_array_equal(filled[mask], want_mask)
    real = np.asarray(want_mask)  # Padding, which attention masks out, may differ.
    np.testing.assert_allclose(filled[hidden][real], np.asarray(x)[real], rtol=1e-5,
                               atol=1e-5)

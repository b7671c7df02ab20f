"""The training loop: exact resume, non-finite loss handling, metrics, init_from."""

import json

import jax
import numpy as np
import pytest

from dgi_jax import checkpointing, run_setup, train
from run_fixtures import tiny_config


@pytest.fixture(scope="module")
def tfds_dir(tiny_run):
  return tiny_run.tfds_dir  # The synthetic dataset of the session's tiny run.


def _final_params(workdir):
  checkpointer = checkpointing.Checkpointer(workdir, read_only=True)
  params, step = checkpointer.read_params(), checkpointer.latest_step()
  checkpointer.close()
  return params, step


def test_interrupted_and_resumed_run_equals_uninterrupted_run_bitwise(tiny_run, tmp_path):
  # The uninterrupted run is the session's tiny run, which also validated at steps 10
  # and 20: validation reads the params and must not change the training either.
  train.train_and_evaluate(tiny_run.config, tmp_path, stop_at_step=10)
  assert _final_params(tmp_path)[1] == 10
  train.train_and_evaluate(tiny_run.config, tmp_path)
  straight, step_a = _final_params(tiny_run.workdir)
  resumed, step_b = _final_params(tmp_path)
  assert step_a == step_b == 20
  for a, b in zip(jax.tree.leaves(straight), jax.tree.leaves(resumed)):
    np.testing.assert_array_equal(a, b)
  # The metric lines of the resumed run continue the same loss trace.
  def losses(path):
    return {r["step"]: r["total"] for r in map(json.loads, open(path / "metrics.jsonl"))
            if r["kind"] == "train"}
  assert losses(tiny_run.workdir) == losses(tmp_path)


def test_non_finite_loss_stops_with_step_and_keeps_last_good_checkpoint(tfds_dir, tmp_path):
  config = tiny_config(tfds_dir, num_steps=40, checkpoint_every=1)
  with config.unlocked():
    config.optim.backbone_lr = 1e30
    config.optim.quantizer_lr = 1e30
    config.optim.grad_clip_norm = 1e30
    config.optim.warmup_steps = 0
  with pytest.raises(train.NonFiniteLossError, match=r"non-finite loss at step (\d+)") as err:
    train.train_and_evaluate(config, tmp_path)
  failed_step = int(err.value.args[0].split("step ")[1].split(" ")[0])
  params, saved_step = _final_params(tmp_path)
  assert saved_step is not None and saved_step <= failed_step
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))
  assert f"last good checkpoint: step {saved_step}" in str(err.value)


def test_metrics_file_and_kmeans_initialised_codebooks(tfds_dir, tmp_path):
  config = tiny_config(tfds_dir, num_steps=3, log_every=1, checkpoint_every=3)
  train.train_and_evaluate(config, tmp_path)
  lines = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  assert [l["step"] for l in lines] == [1, 2, 3]
  for key in ("ntp", "global", "local", "infonce", "div", "total", "grad_norm",
              "item_encoder_last_layer_grad_norm", "tau", "steps_per_sec"):
    assert np.isfinite(lines[-1][key]), key
  assert lines[0]["tau"] == pytest.approx(1.0)
  assert lines[-1]["tau"] == pytest.approx(0.1, rel=1e-5)


def _init_from_source_run(source_run, tmp_path, **train_overrides):
  """A 1-step target run initialised from `source_run` (the session's tiny run) at
  learning rate 0 (so the target's params are what initialisation gave it); returns the
  source's and the target's params and the target's config."""
  source, _ = _final_params(source_run.workdir)
  config = tiny_config(source_run.tfds_dir, num_steps=1, checkpoint_every=1,
                       init_from=str(source_run.workdir), **train_overrides)
  with config.unlocked():
    config.optim.backbone_lr = 0.0
    config.optim.quantizer_lr = 0.0
  train.train_and_evaluate(config, tmp_path / "target")
  target, _ = _final_params(tmp_path / "target")
  return source, target, config


def test_init_from_copies_params_of_another_run(tiny_run, tmp_path):
  source, target, _ = _init_from_source_run(tiny_run, tmp_path)
  for a, b in zip(jax.tree.leaves(source), jax.tree.leaves(target)):
    np.testing.assert_array_equal(a, b)


def test_init_from_kmeans_keeps_the_encoder_and_reclusters_codebooks(tiny_run, tmp_path):
  source, target, config = _init_from_source_run(tiny_run, tmp_path, init_from_kmeans=True)
  # Known answer: k-means (the run's own k-means rng) over the loaded encoder's embeddings.
  model = run_setup.build_model(config)
  run_data = run_setup.prepare_run_data(config, tmp_path / "target")
  kmeans_rng = jax.random.split(jax.random.PRNGKey(config.train.seed), 3)[1]
  expected = run_setup.kmeans_init_codebooks(model, source, run_data.catalogue_tokens, config,
                                         kmeans_rng)
  for name in source:
    if name.startswith("codebook_"):
      assert not np.allclose(target[name], source[name])
      np.testing.assert_allclose(target[name], expected[name], rtol=1e-5, atol=1e-6)
    else:
      for a, b in zip(jax.tree.leaves(source[name]), jax.tree.leaves(target[name])):
        np.testing.assert_array_equal(a, b)

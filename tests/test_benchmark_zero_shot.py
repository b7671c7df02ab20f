"""The benchmark's zero-shot row: the pre-trained encoder's cosine ranking, untrained."""

import jax
import pytest

from dgi_jax import run_setup
from dgi_jax.baselines import dense
from dgi_jax.benchmark import finished_runs, methods, runner
from dgi_jax.data import jsonl_format, synthetic_catalogue
from dgi_jax.models import encoders
from conftest import load_config
from parity_fixtures import minilm_config  # noqa: F401  pylint: disable=unused-import


def _config(base, data_dir, workdir):
  config = base.copy_and_resolve_references()
  with config.unlocked():
    config.benchmark = load_config("benchmark", "scratch").benchmark
    config.data.dataset = str(data_dir)
    config.data.tfds_dir = str(workdir / "tfds")
  config.lock()
  return config


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  root = tmp_path_factory.mktemp("zero_shot")
  raw = synthetic_catalogue.make_synthetic_dataset(120, 400, 60, seed=7)
  return jsonl_format.write_jsonl_dataset(root / "jsonl", raw.items, raw.splits)


def _metrics(model, params, config, workdir, popularity_weight):
  run_data = run_setup.prepare_run_data(config, workdir)
  ranked, relevant, _ = dense.dense_rankings(model, params, run_data, config, "test", 20,
                                             popularity_weight=popularity_weight)
  return runner._ranked_report(ranked, relevant, None, run_data, config, 1.0)["metrics"]  # pylint: disable=protected-access


def test_zero_shot_ranks_by_the_pretrained_weights_without_training(
    minilm_config, dataset, tmp_path):  # noqa: F811
  config = _config(minilm_config, dataset, tmp_path)
  result = runner.run_method(methods.BY_NAME["zero_shot"], config, tmp_path)
  assert result["train_seconds"] == 0.0
  assert not (tmp_path / "zero_shot" / "checkpoints").exists()  # Nothing trained.
  model = run_setup.build_model(config)
  fresh = run_setup.init_params(model, config, jax.random.PRNGKey(config.train.seed))
  loaded = encoders.load_pretrained_params(fresh, model.cfg, config.model.pretrained)
  # The test split is ranked at the popularity weight validation chose from the grid.
  weight = result["report"]["popularity_weight_selection"]["chosen"]
  assert weight in config.benchmark.popularity_weight_grid
  assert result["report"]["metrics"] == pytest.approx(_metrics(model, loaded, config,
                                                               tmp_path, weight))
  # The same ranking with the encoder's random initialisation differs: the row reads
  # the checkpoint's weights.
  assert result["report"]["metrics"] != pytest.approx(_metrics(model, fresh, config,
                                                               tmp_path, weight))


def test_zero_shot_is_skipped_without_a_pretrained_encoder(dataset, tmp_path):
  config = load_config("tiny")
  with config.unlocked():
    config.benchmark = load_config("benchmark", "scratch").benchmark
  config.lock()
  lines = []
  runner.run_benchmark(str(dataset), "zero_shot", config, tmp_path, log=lines.append)
  assert any("zero_shot: skipped" in line for line in lines)
  assert finished_runs.read_result(tmp_path, "zero_shot") is None

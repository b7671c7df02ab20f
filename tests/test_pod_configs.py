"""The TPU pod configs: the paper's model shape and schedule, float32 params, valid splits."""

import json

import jax
import jax.numpy as jnp
import pytest

from conftest import load_config
from dgi_jax import run_setup
from dgi_jax.models import encoders
from model_fixtures import T5_LARGE


@pytest.mark.parametrize("name, batch, steps", [("pod_t5large", 128, 15000),
                                                ("pod_large_batch", 1024, 1875)])
def test_pod_configs(name, batch, steps, tmp_path):
  (tmp_path / "config.json").write_text(json.dumps(T5_LARGE))
  config = load_config(name)
  assert config.model.encoder == "t5" and not config.model.pretrained  # Set at launch.
  with config.unlocked():
    config.model.pretrained = str(tmp_path)
  config = encoders.resolve_pretrained(config)
  assert config.train.distributed and config.model.dtype == "bfloat16"
  assert config.train.global_batch_size == batch and config.train.num_steps == steps
  assert config.optim.quantizer_lr == pytest.approx(10 * config.optim.backbone_lr)
  # Same number of training examples in both configs.
  assert batch * steps == 128 * 15000
  # The global batch splits over the default slice (v4-32: 16 chips on 4 hosts).
  assert batch % 16 == 0
  model = run_setup.build_model(config)
  spec = model.cfg.encoder_spec
  assert (model.cfg.d_model, spec.num_layers, spec.num_heads, spec.intermediate_size,
          spec.activation) == (1024, 24, 16, 4096, "relu")
  assert model.cfg.codebook_sizes == (4096, 1024, 256)
  params = jax.eval_shape(lambda: run_setup.init_params(model, config, jax.random.PRNGKey(0)))
  assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}
  encoder = sum(x.size for x in jax.tree.leaves(params["encoder"]))
  assert 330e6 < encoder < 340e6  # t5-large's encoder: 335M parameters.

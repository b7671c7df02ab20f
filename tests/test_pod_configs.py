"""The TPU pod configs: the paper's model shape and schedule, float32 params, valid splits."""

import jax
import jax.numpy as jnp
import pytest

from conftest import load_config
from dgi_jax import train


@pytest.mark.parametrize("name, batch, steps", [("pod_t5large", 128, 15000),
                                                ("pod_large_batch", 1024, 1875)])
def test_pod_configs(name, batch, steps):
  config = load_config(name)
  assert config.train.distributed and config.model.dtype == "bfloat16"
  assert config.train.global_batch_size == batch and config.train.num_steps == steps
  assert config.optim.quantizer_lr == pytest.approx(10 * config.optim.backbone_lr)
  # Same number of training examples in both configs.
  assert batch * steps == 128 * 15000
  # The global batch splits over the default slice (v4-32: 16 chips on 4 hosts).
  assert batch % 16 == 0
  model = train.build_model(config)
  assert (model.cfg.d_model, model.cfg.num_heads, model.cfg.mlp_dim,
          model.cfg.encoder_layers) == (1024, 16, 2816, 24)
  assert model.cfg.codebook_sizes == (4096, 1024, 256)
  params = jax.eval_shape(lambda: train.init_params(model, config, jax.random.PRNGKey(0)))
  assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}
  encoder = sum(x.size for x in jax.tree.leaves(params["encoder"]))
  assert 250e6 < encoder < 350e6  # T5-large's encoder is ~335M parameters (gated MLP).

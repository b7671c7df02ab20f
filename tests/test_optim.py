"""The optimiser's parameter groups: which learning rate each parameter trains at."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dgi_jax import optim
from conftest import load_config


def _params():
  """A parameter tree with the top-level names of a pre-trained DGI model."""
  return {"encoder": {"embeddings": jnp.ones((4, 2)), "layer_0": {"w": jnp.ones((2, 2))},
                      "layer_1": {"w": jnp.ones((2, 2))}},
          "decoder": {"w": jnp.ones((2, 2))}, "codebook_0": jnp.ones((3, 2))}


def _optim_config(decoder_lr: float, freeze_layers: int = 0):
  config = load_config("default").optim
  with config.unlocked():
    config.backbone_lr, config.quantizer_lr, config.decoder_lr = 1e-3, 1e-2, decoder_lr
    config.warmup_steps, config.weight_decay = 0, 0.0
    config.freeze_encoder_layers = freeze_layers
  return config


def test_without_decoder_lr_the_decoder_trains_with_the_backbone():
  labels = optim.param_labels(_params(), _optim_config(0.0))
  assert labels["decoder"]["w"] == labels["encoder"]["layer_0"]["w"] == "backbone"
  assert labels["codebook_0"] == "quantizer"
  assert set(optim.peak_learning_rates(_optim_config(0.0))) == {"backbone", "quantizer"}


@pytest.mark.parametrize("decoder_lr", [0.0, 5e-4])
def test_first_update_moves_each_group_by_its_learning_rate(decoder_lr):
  config = _optim_config(decoder_lr, freeze_layers=1)
  params = _params()
  optimizer = optim.make_optimizer(config, total_steps=10)
  # Gradients of magnitude 0.01 (under the clipping norm): Adam's first step moves every
  # trained weight by its peak learning rate, whatever the gradient's size.
  grads = jax.tree.map(lambda p: jnp.full_like(p, 0.01), params)
  updates, _ = optimizer.update(grads, optimizer.init(params), params)
  moved = jax.tree.map(lambda u: float(np.abs(np.asarray(u)).max()), updates)
  assert moved["encoder"]["embeddings"] == moved["encoder"]["layer_0"]["w"] == 0.0  # Frozen.
  assert moved["encoder"]["layer_1"]["w"] == pytest.approx(1e-3, rel=1e-4)
  assert moved["decoder"]["w"] == pytest.approx(decoder_lr or 1e-3, rel=1e-4)
  assert moved["codebook_0"] == pytest.approx(1e-2, rel=1e-4)

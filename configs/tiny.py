"""Tiny config for tests: a few hundred items, a 1-layer 32-wide model, a few steps."""

import ml_collections

from dgi_jax import config_files


def get_config() -> ml_collections.ConfigDict:
  """Returns the locked tiny config."""
  c = config_files.load("default")
  with c.unlocked():
    c.data.synthetic_num_items = 300
    c.data.synthetic_num_train = 1200
    c.data.synthetic_num_eval = 100
    c.data.vocab_size = 600
    c.data.max_item_len = 16
    c.data.max_query_len = 32
    c.data.max_history = 3
    c.model.d_model = 32
    c.model.num_heads = 2
    c.model.mlp_dim = 64
    c.model.encoder_layers = 1
    c.model.decoder_layers = 1
    c.model.codebook_sizes = (8, 8, 8)
    c.optim.warmup_steps = 2
    c.train.global_batch_size = 16
    c.train.num_steps = 20
    c.train.kmeans_iters = 5
    c.train.kmeans_items = 300
    c.train.log_every = 5
    c.train.checkpoint_every = 10
    c.train.eval_every = 0
  return c

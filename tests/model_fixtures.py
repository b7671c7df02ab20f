"""Small models and batches shared by the model, loss and train-step tests."""

import jax
import jax.numpy as jnp
import numpy as np

from dgi_jax.models.config import ModelConfig
from dgi_jax.models.dgi import DGIModel

SMALL = dict(vocab_size=50, max_len=12, d_model=16, num_heads=2, mlp_dim=32,
             encoder_layers=1, decoder_layers=1, codebook_sizes=(5, 4, 3))

# t5-large's config.json as published (v1.0: ReLU feed-forward of 4096).
T5_LARGE = {"model_type": "t5", "architectures": ["T5ForConditionalGeneration"],
            "d_model": 1024, "d_ff": 4096, "d_kv": 64, "num_heads": 16, "num_layers": 24,
            "num_decoder_layers": 24, "vocab_size": 32128, "feed_forward_proj": "relu",
            "relative_attention_num_buckets": 32, "relative_attention_max_distance": 128,
            "layer_norm_epsilon": 1e-6, "dropout_rate": 0.1, "pad_token_id": 0,
            "eos_token_id": 1, "decoder_start_token_id": 0}


def small_model(**overrides) -> DGIModel:
  return DGIModel(ModelConfig(**dict(SMALL, **overrides)))


def random_batch(batch_size=6, item_len=8, query_len=12, vocab=50, seed=0):
  rs = np.random.RandomState(seed)
  item_tokens = rs.randint(1, vocab, (batch_size, item_len)).astype(np.int32)
  item_tokens[:, -2:] = 0  # Some padding.
  query_tokens = rs.randint(1, vocab, (batch_size, query_len)).astype(np.int32)
  query_tokens[::2, 7:] = 0
  return dict(item_tokens=item_tokens, query_tokens=query_tokens,
              item_index=rs.randint(0, 4, batch_size).astype(np.int32),
              example_id=np.arange(batch_size, dtype=np.int32))


def gumbel(model: DGIModel, batch_size: int, seed: int = 1):
  keys = jax.random.split(jax.random.PRNGKey(seed), model.cfg.num_levels)
  return [jax.random.gumbel(k, (batch_size, K)) for k, K in zip(keys, model.cfg.codebook_sizes)]


def init(model: DGIModel, batch, seed: int = 0):
  noise = gumbel(model, batch["item_tokens"].shape[0])
  return model.init(jax.random.PRNGKey(seed), batch["item_tokens"], batch["query_tokens"],
                    noise, 1.0)["params"]


def sin_loss_and_grads(model: DGIModel, batch, params):
  """sum(sin(x)) over every float output of a forward pass (fixed Gumbel noise), and its
  gradient: every output, and so every parameter, takes part."""
  noise = gumbel(model, batch["item_tokens"].shape[0])

  def loss(p):
    out = model.apply({"params": p}, batch["item_tokens"], batch["query_tokens"], noise, 1.0)
    return sum(jnp.sum(jnp.sin(x)) for x in jax.tree.leaves(out)
               if jnp.issubdtype(x.dtype, jnp.floating))

  return loss, jax.jit(jax.value_and_grad(loss))(params)


def assert_gradients_close(grads, reference, rtol=1e-4):
  """Leaf by leaf; returns [(path name, reference leaf)]. The absolute tolerance is 1e-5
  of the largest reference entry: the attention key projection's gradient cancels (its
  bias's is exactly zero, since one constant added to a query's scores leaves the softmax
  unchanged), so there two summation orders differ by rounding, not by a relative amount."""
  atol = 1e-5 * max(float(np.abs(g).max()) for g in jax.tree.leaves(reference))
  got = dict(jax.tree_util.tree_leaves_with_path(grads))
  leaves = []
  for path, ref in jax.tree_util.tree_leaves_with_path(reference):
    name = jax.tree_util.keystr(path)
    np.testing.assert_allclose(got[path], ref, rtol=rtol, atol=atol, err_msg=name)
    leaves.append((name, ref))
  return leaves


def count_leaves(tree) -> int:
  return len(jax.tree.leaves(tree))


def max_abs_diff(a, b) -> float:
  a, b = jax.device_get((a, b))
  return max(float(np.max(np.abs(np.asarray(x, np.float32) - np.asarray(y, np.float32))))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))

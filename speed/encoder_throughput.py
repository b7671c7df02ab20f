"""Training throughput of the pre-trained encoders: Flax BertEncoder / T5Encoder vs PyTorch.

One forward + backward of a pooled-output loss over a [B, L] batch (what a training step
asks of the encoder): the jitted Flax gradient (f32 and bf16 compute) and, with torch
installed, `transformers`' same model (eager, f32) in the same process. Prints
sequences/s, tokens/s, the fraction of the measured matmul peak the model's FLOPs reach,
and the JAX / PyTorch speed ratio. BERT: the bundled all-MiniLM-L6-v2; T5: a
t5-small-shaped random encoder (no T5 weights ship here).

  python speed/encoder_throughput.py [--batch 128] [--length 64] [--repeats 5]
"""

import argparse
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common import machine_description, matmul_peak_flops, time_calls  # noqa: E402

from dgi_jax.models import pretrained  # noqa: E402
from dgi_jax.models.bert import BertEncoder  # noqa: E402
from dgi_jax.models.t5 import T5Encoder  # noqa: E402

T5_SMALL = pretrained.EncoderSpec(
    kind="t5", vocab_size=32128, hidden_size=512, num_layers=6, num_heads=8, head_dim=64,
    intermediate_size=2048, layer_norm_eps=1e-6, activation="relu",
    relative_attention_num_buckets=32, relative_attention_max_distance=128)


def train_flops(spec: pretrained.EncoderSpec, batch: int, length: int) -> float:
  """Forward + backward (3x the forward): multiply-adds x 2 of the dense layers and the two
  attention products (no softmax, no embedding gathers)."""
  d, inner, ff = spec.hidden_size, spec.inner_size, spec.intermediate_size
  ff_mats = 3 if spec.activation == "gated-gelu" else 2
  per_token = 2 * (4 * d * inner + ff_mats * d * ff)
  attention = 2 * 2 * length * inner
  return 3 * spec.num_layers * batch * length * (per_token + attention)


def flax_seconds(spec, params, tokens, weights, dtype, repeats: int) -> float:
  """Seconds per jitted gradient of `sum(pooled * weights)` w.r.t. every parameter."""
  cls = BertEncoder if spec.kind == "bert" else T5Encoder

  def loss(p, t):
    return jnp.sum(cls(spec, dtype=dtype).apply({"params": p}, t)[1] * weights)

  grad = jax.jit(jax.grad(loss))
  params = jax.device_put(params)
  tokens = jnp.asarray(tokens)
  jax.block_until_ready(grad(params, tokens))  # Compile.
  return time_calls(lambda: jax.block_until_ready(grad(params, tokens)), repeats)


def torch_seconds(spec, directory, tokens, weights, repeats: int):
  """Seconds per forward + backward of the PyTorch model (masked-mean pooled loss, as the
  Flax side), or None without torch/transformers."""
  try:
    import torch  # pylint: disable=g-import-not-at-top
    import transformers  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  if spec.kind == "bert":
    model = transformers.BertModel.from_pretrained(directory)
  else:
    config = transformers.T5Config(
        vocab_size=spec.vocab_size, d_model=spec.hidden_size, d_kv=spec.head_dim,
        d_ff=spec.intermediate_size, num_layers=spec.num_layers, num_heads=spec.num_heads)
    model = transformers.T5EncoderModel(config)
  model.eval()  # No dropout, as the Flax side.
  ids, mask = torch.tensor(tokens), torch.tensor(tokens != 0).long()
  w = torch.tensor(np.asarray(weights))

  def run():
    model.zero_grad(set_to_none=True)
    states = model(input_ids=ids, attention_mask=mask).last_hidden_state
    m = mask[..., None].float()
    pooled = (states * m).sum(1) / m.sum(1).clamp(min=1.0)
    (pooled * w).sum().backward()

  run()
  return time_calls(run, repeats)


def report(name, spec, seconds, batch, length, peak):
  flops = train_flops(spec, batch, length)
  print(f"  {name:<12} {batch / seconds:9.1f} seq/s {batch * length / seconds:10.0f} tok/s "
        f"{flops / seconds / 1e9:7.1f} GFLOP/s ({flops / seconds / peak:5.1%} of peak)")


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--length", type=int, default=64)
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args()
  print(machine_description())
  peak = matmul_peak_flops()
  print(f"matmul peak {peak / 1e9:.0f} GFLOP/s; batch {args.batch} x {args.length} tokens")
  rng = np.random.default_rng(0)
  minilm = pretrained.bundled_minilm_dir()
  bert = pretrained.read_spec(minilm)
  t5_params = T5Encoder(T5_SMALL).init(jax.random.key(0), jnp.ones((1, 8), jnp.int32))
  for name, spec, params, directory in (
      ("all-MiniLM-L6-v2", bert, pretrained.load_params(minilm, bert), minilm),
      ("t5-small shape", T5_SMALL, t5_params["params"], None)):
    # Real-token ids, the last quarter of every other row padding.
    tokens = rng.integers(1000, spec.vocab_size, (args.batch, args.length))
    tokens[::2, 3 * args.length // 4:] = 0
    weights = rng.standard_normal((args.batch, spec.hidden_size)).astype(np.float32)
    print(name)
    seconds = {}
    for dtype in (jnp.float32, jnp.bfloat16):
      seconds[dtype] = flax_seconds(spec, params, tokens, weights, dtype, args.repeats)
      report(f"flax {jnp.dtype(dtype).name}", spec, seconds[dtype], args.batch, args.length,
             peak)
    torch_time = torch_seconds(spec, directory, tokens, weights, args.repeats)
    if torch_time is not None:
      report("torch f32", spec, torch_time, args.batch, args.length, peak)
      print(f"  JAX f32 / PyTorch f32 speed: {torch_time / seconds[jnp.float32]:.2f}x")


if __name__ == "__main__":
  main()

"""Train-step throughput of a config beside this machine's measured matmul peak.

Prints steps/s, examples/s and the achieved FLOP/s of the jitted (sharded) train step —
FLOPs from XLA's cost analysis of the compiled step — and the utilisation against an
n^3 matmul in the step's compute dtype measured in the same run (n 2048 on a CPU, 8192
on an accelerator, whose peak a smaller product does not reach). With several
`--dense_gradient` settings (models/matmul.py), `--attention_gradient` settings
(models/attention.py) or `--dtype`s each combination gets its own
compiled step, and the steps are timed in turn in one process, side by side; each is
compared with the peak of its own dtype.

  python speed/train_throughput.py [--config configs/default.py] [--steps 20]
      [--repeats 3] [--batch_size B] [--dtype float32,bfloat16] [--peak_n N]
      [--dense_gradient flat,autodiff] [--attention_gradient written,autodiff]
"""

import argparse
import pathlib
import sys

import jax
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from common import keep_freed_memory_in_heap, machine_description  # noqa: E402
from common import best_interleaved, matmul_peak_flops  # noqa: E402

from dgi_jax import config_files, optim, run_setup, sharding, train_step  # noqa: E402
from dgi_jax.models import encoders  # noqa: E402


def random_batch(config, batch_size, rs):
  vocab = config.data.vocab_size
  return dict(
      item_tokens=rs.randint(1, vocab, (batch_size, config.data.max_item_len)).astype(np.int32),
      query_tokens=rs.randint(1, vocab, (batch_size, config.data.max_query_len)).astype(np.int32),
      item_index=rs.randint(0, 1000, batch_size).astype(np.int32),
      example_id=np.arange(batch_size, dtype=np.int32))


def sharded_train_step(config):
  """Fresh params, their replicated train state, the jitted sharded step, the batch sharding."""
  model = run_setup.build_model(config)
  optimizer = optim.make_optimizer(config.optim, config.train.num_steps)
  mesh = sharding.make_mesh()
  rep, data = sharding.replicated(mesh), sharding.data_sharding(mesh)
  params = run_setup.init_params(model, config, jax.random.PRNGKey(0), out_sharding=rep)
  state = jax.device_put(train_step.create_train_state(params, optimizer), rep)
  step = jax.jit(train_step.make_train_step(model, optimizer, config, config.train.num_steps),
                 in_shardings=(rep, data, rep), out_shardings=(rep, rep), donate_argnums=(0,))
  return params, state, step, data


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default="configs/default.py")
  parser.add_argument("--steps", type=int, default=20, help="steps per timed window")
  parser.add_argument("--repeats", type=int, default=3,
                      help="timed windows per variant, interleaved; the best is reported")
  parser.add_argument("--dense_gradient", default="",
                      help="comma-separated model.dense_gradient settings to time side by "
                      "side (default: the config's)")
  parser.add_argument("--attention_gradient", default="",
                      help="comma-separated model.attention_gradient settings to time side "
                      "by side (default: the config's)")
  parser.add_argument("--batch_size", type=int, default=0,
                      help="global batch (default: the config's train.global_batch_size)")
  parser.add_argument("--dtype", default="",
                      help="comma-separated compute dtypes (float32, bfloat16) to time side "
                      "by side (default: the config's model.dtype)")
  parser.add_argument("--peak_n", type=int, default=0,
                      help="side of the peak matmul (default 2048 on CPU, 8192 otherwise)")
  parser.add_argument("--heap_malloc", action="store_true",
                      help="glibc: keep XLA's per-step temporaries in the heap instead of "
                      "mmap/munmap each step (common.keep_freed_memory_in_heap)")
  args = parser.parse_args()
  if args.heap_malloc and not keep_freed_memory_in_heap():
    print("--heap_malloc: not glibc; ignored")
  # A pre-trained encoder's architecture, as training reads it (weights: random init).
  config = encoders.resolve_pretrained(config_files.load_file(args.config))
  if args.batch_size:
    with config.unlocked():
      config.train.global_batch_size = args.batch_size
  batch_size = config.train.global_batch_size
  gradients = (args.dense_gradient.split(",") if args.dense_gradient
               else [config.model.dense_gradient])
  attentions = (args.attention_gradient.split(",") if args.attention_gradient
                else [config.model.attention_gradient])
  dtypes = args.dtype.split(",") if args.dtype else [config.model.dtype]
  variants = [(gradient, attention, dtype) for dtype in dtypes for attention in attentions
              for gradient in gradients]

  windows, flops, n_params = {}, {}, 0
  for variant_key in variants:
    variant = config.copy_and_resolve_references()
    with variant.unlocked():
      (variant.model.dense_gradient, variant.model.attention_gradient,
       variant.model.dtype) = variant_key
    params, state, step, data = sharded_train_step(variant)
    n_params = sum(x.size for x in jax.tree.leaves(params))
    batch = sharding.global_batch(random_batch(variant, batch_size, np.random.RandomState(0)),
                                  data)
    compiled = step.lower(state, batch, jax.random.PRNGKey(1)).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops[variant_key] = float(cost.get("flops", float("nan")))
    windows[variant_key] = _window(compiled, state, batch, args.steps)
  seconds = {key: s / args.steps for key, s in best_interleaved(windows,
                                                               args.repeats).items()}
  peak_n = args.peak_n or (2048 if jax.devices()[0].platform == "cpu" else 8192)
  peaks = {dtype: matmul_peak_flops(peak_n, dtype=dtype) for dtype in dtypes}

  print(f"machine: {machine_description()}" + ("  (heap malloc)" if args.heap_malloc else ""))
  print(f"config: {args.config}  params: {n_params / 1e6:.2f}M  global batch: {batch_size}")
  for dtype, peak in peaks.items():
    print(f"matmul peak ({peak_n}^3, {dtype}): {peak / 1e9:.1f} GFLOP/s")
  print(f"each step the best of {args.repeats} interleaved windows of {args.steps}")
  for key in variants:
    gradient, attention, dtype = key
    print(f"dense_gradient={gradient} attention_gradient={attention} dtype={dtype}: "
          f"step {seconds[key] * 1e3:.1f} ms   steps/s {1 / seconds[key]:.2f}   "
          f"examples/s {batch_size / seconds[key]:.0f}   "
          f"FLOPs/step (XLA) {flops[key] / 1e9:.2f} G   achieved "
          f"{flops[key] / seconds[key] / 1e9:.1f} GFLOP/s   utilisation "
          f"{flops[key] / seconds[key] / peaks[dtype]:.1%} of the {dtype} peak")
  first = variants[0]
  for key in variants[1:]:
    print(f"{'/'.join(key)} against {'/'.join(first)}: "
          f"{seconds[first] / seconds[key]:.3f}x steps/s")


def _window(compiled, state, batch, steps: int):
  """A function running `steps` train steps on `batch` (the state donated and carried)."""
  holder, rng = {"state": state}, jax.random.PRNGKey(1)

  def run():
    for _ in range(steps):
      holder["state"], metrics = compiled(holder["state"], batch, rng)
    jax.block_until_ready(metrics)
  return run


if __name__ == "__main__":
  main()

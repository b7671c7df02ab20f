"""Train-step throughput of a config beside this machine's measured matmul peak.

Prints steps/s, examples/s and the achieved FLOP/s of the jitted (sharded) train step —
FLOPs from XLA's cost analysis of the compiled step — and the utilisation against a
2048^3 matmul measured in the same run.

  python speed/train_throughput.py [--config configs/default.py] [--steps 20]
"""

import argparse
import pathlib
import sys

import jax
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from common import keep_freed_memory_in_heap, machine_description  # noqa: E402
from common import matmul_peak_flops, time_calls  # noqa: E402

from dgi_jax import config_files, optim, run_setup, sharding, train_step  # noqa: E402


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
  parser.add_argument("--steps", type=int, default=20)
  parser.add_argument("--heap_malloc", action="store_true",
                      help="glibc: keep XLA's per-step temporaries in the heap instead of "
                      "mmap/munmap each step (common.keep_freed_memory_in_heap)")
  args = parser.parse_args()
  if args.heap_malloc and not keep_freed_memory_in_heap():
    print("--heap_malloc: not glibc; ignored")
  config = config_files.load_file(args.config)
  batch_size = config.train.global_batch_size

  params, state, step, data = sharded_train_step(config)
  rs = np.random.RandomState(0)
  batch = sharding.global_batch(random_batch(config, batch_size, rs), data)
  rng = jax.random.PRNGKey(1)
  compiled = step.lower(state, batch, rng).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops_per_step = float(cost.get("flops", float("nan")))

  holder = {"state": state}

  def one_step():
    holder["state"], metrics = compiled(holder["state"], batch, rng)
    jax.block_until_ready(metrics)

  for _ in range(3):  # warm-up
    one_step()
  seconds = time_calls(one_step, args.steps)
  peak = matmul_peak_flops()

  n_params = sum(x.size for x in jax.tree.leaves(params))
  print(f"machine: {machine_description()}" + ("  (heap malloc)" if args.heap_malloc else ""))
  print(f"config: {args.config}  params: {n_params / 1e6:.2f}M  global batch: {batch_size}")
  print(f"step time (median of {args.steps}): {seconds * 1e3:.1f} ms")
  print(f"steps/s: {1 / seconds:.2f}   examples/s: {batch_size / seconds:.0f}")
  print(f"FLOPs/step (XLA cost analysis): {flops_per_step / 1e9:.2f} GFLOP")
  print(f"achieved: {flops_per_step / seconds / 1e9:.1f} GFLOP/s   "
        f"matmul peak: {peak / 1e9:.1f} GFLOP/s   "
        f"utilisation: {flops_per_step / seconds / peak:.1%}")


if __name__ == "__main__":
  main()

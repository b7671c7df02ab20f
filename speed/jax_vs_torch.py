"""Train steps/s: the jitted JAX train step vs the PyTorch reference, same machine and run.

JAX: `train_step.make_train_step` (the production step: Gumbel noise, forward, backward,
clipping, two-LR AdamW) under `jax.jit` with the state donated. PyTorch: the reference
model's forward and backward plus `training.ReferenceOptimizer` (the same clipping and
AdamW), eager and, where it works, with the model under `torch.compile`. Both start from
the same weights and see the same batch; each draws its own Gumbel noise per step.

Usage:
  python speed/jax_vs_torch.py [--config configs/default.py] [--batch_size 128]
      [--steps 20] [--repeats 3] [--no_compile] [--single_core] [--heap_malloc]
      [--torch_device auto|cpu|cuda]

On a GPU both run there, float32 with TF32 matmuls (XLA's default precision; torch is set
to the same), and each timed window ends with the device synchronised.

Each framework is timed over `--repeats` windows of `--steps` steps after warm-up,
windows interleaved across frameworks; the best window is reported (other processes on a
shared machine only ever slow a window down).
"""

import argparse
import os
import pathlib
import platform
import sys
import time

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import torch  # noqa: E402

from dgi_jax import config_files, optim, train_step  # noqa: E402
from dgi_jax.parity import compare, convert, training  # noqa: E402


def _warm(run_steps):
  """Seconds of the first step (compilation included), after which two more run."""
  start = time.perf_counter()
  run_steps(1)
  first = time.perf_counter() - start
  run_steps(2)
  return first


def jax_runner(config, params, batch):
  """`run_steps(n)` of the jitted production train step."""
  model, _ = compare.build_flax(config)
  total_steps = int(config.train.num_steps)
  optimizer = optim.make_optimizer(config.optim, total_steps)
  step_fn = jax.jit(train_step.make_train_step(model, optimizer, config, total_steps),
                    donate_argnums=(0,))
  state = train_step.create_train_state(jax.tree.map(jnp.asarray, params), optimizer)
  arrays = {k: jnp.asarray(batch[k]) for k in ("item_tokens", "query_tokens", "item_index")}
  arrays["example_id"] = jnp.arange(batch["item_tokens"].shape[0], dtype=jnp.int32)
  rng = jax.random.PRNGKey(0)
  holder = {"state": state}

  def run_steps(n):
    metrics = None
    for _ in range(n):
      holder["state"], metrics = step_fn(holder["state"], arrays, rng)
    jax.block_until_ready(metrics)
  return run_steps


def torch_runner(config, params, batch, compiled: bool, device: torch.device):
  """`run_steps(n)` of the PyTorch reference (forward, backward, optimizer step)."""
  reference = compare.build_reference(
      config, convert.flax_to_torch(params, compare.encoder_spec(config))).to(device)
  opt = training.ReferenceOptimizer(reference, params, config.optim,
                                    int(config.train.num_steps))
  forward = torch.compile(reference) if compiled else reference
  item_tokens, query_tokens, item_index = (
      x.to(device) for x in compare.torch_batch(batch)[:3])
  sizes = tuple(config.model.codebook_sizes)
  b = item_tokens.shape[0]
  counter = {"step": 0}

  def run_steps(n):
    for _ in range(n):
      noise = [-torch.log(-torch.log(torch.rand(b, k, device=device).clamp_min(1e-20)))
               for k in sizes]
      out = forward(item_tokens, query_tokens, item_index, noise, 1.0)
      out["total"].backward()
      opt.step(counter["step"])
      counter["step"] += 1
    if device.type == "cuda":
      torch.cuda.synchronize(device)
  return run_steps


def torch_device(name: str) -> torch.device:
  """The device the reference runs on: `name`, or for 'auto' the GPU where JAX uses one."""
  if name == "auto":
    on_gpu = jax.devices()[0].platform == "gpu" and torch.cuda.is_available()
    name = "cuda" if on_gpu else "cpu"
  return torch.device(name)


def _torch_device_name(device: torch.device) -> str:
  return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--config", default=str(REPO_ROOT / "configs" / "default.py"))
  parser.add_argument("--batch_size", type=int, default=128)
  parser.add_argument("--steps", type=int, default=20)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--no_compile", action="store_true", help="skip torch.compile")
  parser.add_argument("--single_core", action="store_true",
                      help="pin the process to one core, both frameworks single-threaded "
                      "(steadier figures on a machine other processes share)")
  parser.add_argument("--torch_device", default="auto",
                      help="'cpu', 'cuda' or 'auto' (cuda where JAX's default device is a GPU "
                      "and torch sees one)")
  parser.add_argument("--heap_malloc", action="store_true",
                      help="glibc: one heap, no mmap, no trimming, for both frameworks, so "
                      "per-step temporaries are reused instead of page-faulted in afresh "
                      "(speed/common.py keep_freed_memory_in_heap)")
  args = parser.parse_args()
  if args.heap_malloc:
    sys.path.insert(0, str(REPO_ROOT / "speed"))
    from common import keep_freed_memory_in_heap  # pylint: disable=g-import-not-at-top
    if not keep_freed_memory_in_heap():
      print("--heap_malloc: not glibc; ignored")
  if args.single_core:
    # XLA reads XLA_FLAGS when JAX starts its backend, at the first computation below.
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               " --xla_cpu_multi_thread_eigen=false").strip()
    torch.set_num_threads(1)

  config = compare.with_model_overrides(config_files.load_file(args.config))
  device = torch_device(args.torch_device)
  if device.type == "cuda":
    # XLA lets a float32 GPU matmul run in TF32 at its default precision; torch does
    # not unless told. Both run TF32 here, so the two compute the same kind of product.
    torch.set_float32_matmul_precision("high")
  m = config.model
  print(f"machine: {platform.platform()}, {platform.machine()}, {os.cpu_count()} CPUs "
        f"({len(os.sched_getaffinity(0))} used), load average {os.getloadavg()[0]:.2f}")
  print(f"jax {jax.__version__} on {jax.devices()[0].device_kind} ({jax.device_count()} "
        f"device(s)); torch {torch.__version__} on {_torch_device_name(device)}, "
        f"{torch.get_num_threads()} threads, float32 matmul precision "
        f"{torch.get_float32_matmul_precision()}")
  print(f"model: d={m.d_model} heads={m.num_heads} mlp={m.mlp_dim} "
        f"layers={m.encoder_layers}+{m.decoder_layers} codebooks={tuple(m.codebook_sizes)} "
        f"vocab={config.data.vocab_size}; batch {args.batch_size} x "
        f"(item {config.data.max_item_len}, request {config.data.max_query_len}) tokens")

  batch = compare.make_batch(config, args.batch_size, seed=0)
  params = compare.init_flax_params(config, batch, seed=0)
  runners, first_call = {}, {}
  candidates = [("jax jit", lambda: jax_runner(config, params, batch)),
                ("torch eager", lambda: torch_runner(config, params, batch, False, device))]
  if not args.no_compile:
    candidates.append(("torch.compile",
                       lambda: torch_runner(config, params, batch, True, device)))
  for name, make in candidates:
    try:
      runners[name] = make()
      first_call[name] = _warm(runners[name])
    except Exception as e:  # pylint: disable=broad-except
      # Inductor needs a working C++ toolchain; report instead of failing the benchmark.
      runners.pop(name, None)
      print(f"{name} unavailable: {type(e).__name__}: {str(e).splitlines()[0]}")

  # Windows interleaved across frameworks, so a burst of load from other processes
  # hits all of them alike; the best window of each is reported.
  best = {name: float("inf") for name in runners}
  for _ in range(args.repeats):
    for name, run_steps in runners.items():
      start = time.perf_counter()
      run_steps(args.steps)
      best[name] = min(best[name], time.perf_counter() - start)
  results = {name: (args.steps / best[name], first_call[name]) for name in runners}

  print(f"\n{'':<14}{'steps/s':>9}{'ms/step':>10}{'first call s':>14}")
  for name, (rate, first) in results.items():
    print(f"{name:<14}{rate:>9.2f}{1000 / rate:>10.1f}{first:>14.1f}")
  jax_rate = results["jax jit"][0]
  for name in ("torch eager", "torch.compile"):
    if name in results:
      print(f"jax jit / {name}: {jax_rate / results[name][0]:.2f}x")


if __name__ == "__main__":
  main()

"""Data-parallel scaling of the train step: 1, 2, 4, 8 simulated CPU devices and 2 processes.

Each layout runs in its own subprocess (the device count is fixed when JAX starts): the
jitted, sharded train step of a config on random batches of the config's global batch.
Per layout: median step time, examples/s, and the share of the step spent in collectives.

Collective share, measured from a profile: 5 steps run under `jax.profiler.trace`; the
events of the trace whose names are the collective instructions of the compiled HLO
(all-reduce, all-gather, reduce-scatter, all-to-all, collective-permute) are summed over
all local devices and divided by (local devices x wall time of the 5 profiled steps). A
collective's time includes waiting for the slowest device to arrive, so the share is "time
the devices spend in or blocked on collectives", the quantity that grows with the number of
devices. (The profiled window, not the median step, is the denominator: both come from the
same steps, so the share stays within [0, 1] when step times vary.)

Simulated devices share this machine's cores, so more devices do not make a step faster:
the figures measure the overhead of partitioning and of the collectives, not speed-up.

  python speed/scaling.py [--config configs/default.py] [--steps 20]
"""

import argparse
import glob
import json
import os
import pathlib
import re
import socket
import subprocess
import sys
import tempfile
import time

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(pathlib.Path(__file__).parent))
sys.path.insert(0, str(REPO_ROOT))

from dgi_jax import config_files  # noqa: E402  (no JAX: safe before distributed init)

LAYOUTS = ((1, 1), (1, 2), (1, 4), (1, 8), (2, 4))  # (processes, devices per process)
PROFILED_STEPS = 5
WORKER_TIMEOUT_S = 900
_COLLECTIVE = re.compile(
    r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=.*?\s(all-reduce|all-gather|reduce-scatter|all-to-all|"
    r"collective-permute)(?:-start|-done)?\(", re.MULTILINE)


def collective_names(hlo_text: str) -> set:
  """Instruction names of the collectives in an HLO module's text."""
  return {m.group(1) for m in _COLLECTIVE.finditer(hlo_text)}


def collective_seconds(trace_dir: str, names: set) -> float:
  """Seconds of all trace events named like one of `names`, over every thread."""
  import jax  # pylint: disable=g-import-not-at-top
  files = glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True)
  total_ns = 0
  for plane in jax.profiler.ProfileData.from_file(files[0]).planes:
    for line in plane.lines:
      total_ns += sum(e.duration_ns for e in line.events if e.name in names)
  return total_ns / 1e9


def run_worker(args) -> None:
  """One layout, inside a process whose device count is already fixed; prints JSON."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from common import time_calls  # pylint: disable=g-import-not-at-top
  from train_throughput import random_batch, sharded_train_step  # pylint: disable=g-import-not-at-top
  from dgi_jax import sharding  # pylint: disable=g-import-not-at-top

  if args.num_processes > 1:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=args.coordinator_address,
                               num_processes=args.num_processes, process_id=args.process_id)
  config = config_files.load_file(args.config)
  global_batch = config.train.global_batch_size
  host_batch = sharding.host_batch_size(global_batch)
  _, state, step, data = sharded_train_step(config)
  # Every process draws the same global batch and feeds its own rows of it.
  rows = slice(jax.process_index() * host_batch, (jax.process_index() + 1) * host_batch)
  host_rows = {k: v[rows] for k, v in
               random_batch(config, global_batch, np.random.RandomState(0)).items()}
  batch = sharding.global_batch(host_rows, data)
  rng = jax.random.PRNGKey(1)
  start = time.perf_counter()
  compiled = step.lower(state, batch, rng).compile()
  compile_s = time.perf_counter() - start
  holder = {"state": state}

  def one_step():
    holder["state"], metrics = compiled(holder["state"], batch, rng)
    jax.block_until_ready(metrics)

  for _ in range(3):  # Warm-up.
    one_step()
  seconds = time_calls(one_step, args.steps)
  names = collective_names(compiled.as_text())
  with tempfile.TemporaryDirectory() as trace_dir:
    with jax.profiler.trace(trace_dir):
      start = time.perf_counter()
      for _ in range(PROFILED_STEPS):
        one_step()
      window = time.perf_counter() - start
    in_collectives = collective_seconds(trace_dir, names) if names else 0.0
  per_device = in_collectives / jax.local_device_count()
  if jax.process_index() == 0:
    print(json.dumps(dict(
        processes=jax.process_count(), devices=jax.device_count(), step_ms=seconds * 1e3,
        examples_per_s=global_batch / seconds,
        collective_ms=per_device / PROFILED_STEPS * 1e3,
        collective_share=per_device / window, collectives=len(names),
        compile_s=compile_s)), flush=True)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def run_layout(config: str, steps: int, processes: int, devices: int) -> dict:
  """Starts the worker process(es) of one layout and returns process 0's result."""
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  command = [sys.executable, __file__, "--worker", "--config", config, "--steps", str(steps),
             "--num_processes", str(processes)]
  if processes > 1:
    command += ["--coordinator_address", f"127.0.0.1:{_free_port()}"]
  workers = [subprocess.Popen(command + ["--process_id", str(i)], env=env, cwd=REPO_ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(processes)]
  outputs = [w.communicate(timeout=WORKER_TIMEOUT_S) for w in workers]
  for w, (_, err) in zip(workers, outputs):
    if w.returncode:
      raise RuntimeError(f"{processes} x {devices} devices failed:\n{err[-3000:]}")
  return json.loads(outputs[0][0].strip().splitlines()[-1])


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default="configs/default.py",
                      help="config file (relative to the repository root, or absolute)")
  parser.add_argument("--steps", type=int, default=20, help="timed steps per layout")
  parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
  parser.add_argument("--num_processes", type=int, default=1, help=argparse.SUPPRESS)
  parser.add_argument("--process_id", type=int, default=0, help=argparse.SUPPRESS)
  parser.add_argument("--coordinator_address", default=None, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.worker:
    run_worker(args)
    return

  from common import machine_description  # pylint: disable=g-import-not-at-top
  args.config = str(REPO_ROOT / args.config)  # Workers run from the repository root.
  config = config_files.load_file(args.config)
  print(f"machine: {machine_description()} (in this process; each layout below starts "
        f"its own with the devices it names)")
  print(f"config: {os.path.relpath(args.config, REPO_ROOT)}  global batch: {config.train.global_batch_size}  "
        f"timed steps per layout: {args.steps} (median)")
  print("NOTE: the devices are simulated on this machine's CPU cores; more of them do not "
        "speed a step up. The figures measure the cost of partitioning the step and of its "
        "collectives (cross-process ones over TCP for 2 processes), not scaling on real "
        "accelerators.")
  # collective ms: per device and step.
  header = (f"{'layout':>16} {'step ms':>9} {'examples/s':>11} {'collective ms':>14} "
            f"{'collective share':>17} {'#collectives':>13} {'compile s':>10}")
  print(header)
  print("-" * len(header))
  for processes, devices in LAYOUTS:
    r = run_layout(args.config, args.steps, processes, devices)
    layout = f"{processes} proc x {devices} dev"
    print(f"{layout:>16} {r['step_ms']:9.1f} {r['examples_per_s']:11.0f} "
          f"{r['collective_ms']:14.1f} {r['collective_share']:17.1%} "
          f"{r['collectives']:13d} {r['compile_s']:10.1f}", flush=True)


if __name__ == "__main__":
  main()

"""Multi-process training on one machine: processes joined through `jax.distributed`.

2 processes x 4 CPU devices must train exactly like 1 process x 8 devices (same global
batches, same sharded step; only the all-reduce implementation differs), and checkpoints
must move between the two layouts. Every run is a `dgi train` subprocess; the multi-process
ones are started by `launch/local_multihost.sh`.
"""

import concurrent.futures
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys

import numpy as np
import portpicker
import pytest

from conftest import REPO_ROOT, load_config
from dgi_jax import train

STEPS = 20
RESUME_STEP = 10
RUN_TIMEOUT_S = 300  # Per run; a process that lost its peer would otherwise wait ~5 min.
# The cross-process all-reduce (gloo) sums in another order than the in-process one, so
# losses differ by float rounding (~1e-7 at step 1) which training then amplifies.
RTOL = 1e-5
OVERRIDES = (
    f"--config.train.num_steps={STEPS}",
    f"--config.train.checkpoint_every={RESUME_STEP}",
    "--config.train.log_every=1",
    # How fast rounding differences grow depends on the run. tiny anneals the Gumbel
    # temperature to 0.1 within its 20 steps, and so sharp a softmax turns them into
    # different soft codes: any two summation orders (1 vs 8 devices in one process too)
    # drift apart by ~5% by step 20. At temperature 1 and tiny's learning rates they still
    # reach 1.5e-5 by step 15; at temperature 1 and 0.3x the learning rates they stay
    # near 2e-7 while the loss still falls by ~15%, so a real difference (a misplaced
    # row, a missing all-reduce) stands out.
    "--config.optim.tau_end=1.0",
    "--config.optim.backbone_lr=3e-4",
    "--config.optim.quantizer_lr=3e-3",
)


def _train(workdir, num_processes: int, local_devices: int, tfds_dir) -> None:
  """Runs `dgi train` as `num_processes` processes with `local_devices` CPU devices each.

  Several processes go through `launch/local_multihost.sh`, so the launcher is tested too.
  """
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  # Compiling dominates runs this short, and LLVM's optimisation passes take half of it;
  # every run here compiles the same way, so the comparisons are unaffected.
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_backend_optimization_level=0")
  train_flags = ["--config", str(REPO_ROOT / "configs" / "tiny.py"), "--workdir", str(workdir),
                 f"--config.data.tfds_dir={tfds_dir}", *OVERRIDES]
  log_dir = workdir / "logs"
  log_dir.mkdir(exist_ok=True)
  if num_processes == 1:
    env["XLA_FLAGS"] += f" --xla_force_host_platform_device_count={local_devices}"
    command = [sys.executable, "-m", "dgi_jax.main", "train", *train_flags]
  else:
    command = ["bash", str(REPO_ROOT / "launch" / "local_multihost.sh"),
               "-n", str(num_processes), "-d", str(local_devices),
               "-p", str(portpicker.pick_unused_port()), "-l", str(log_dir), "--",
               *train_flags]
  env["PYTHON"] = sys.executable
  with (log_dir / "launch.log").open("w") as out:
    # Its own process group, so a timeout can stop the launcher and every process it started.
    process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=out,
                               stderr=subprocess.STDOUT, start_new_session=True)
    try:
      code = process.wait(timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
      os.killpg(process.pid, signal.SIGKILL)
      process.wait()
      code = "timeout"
  if code != 0:
    logs = "\n".join(f"--- {log.name}:\n{log.read_text()[-3000:]}"
                     for log in sorted(log_dir.glob("*.log")))
    pytest.fail(f"dgi train ({num_processes} processes) failed with {code} in {workdir}:\n"
                f"{logs}")


def _losses(workdir) -> dict:
  lines = (pathlib.Path(workdir) / train.METRICS_FILE).read_text().splitlines()
  return {r["step"]: r["total"] for r in map(json.loads, lines) if r["kind"] == "train"}


def _start_from_checkpoint(source, target, step: int, num_processes: int) -> None:
  """Copies `source`'s checkpoint `step` into a fresh work directory `target`.

  The data iterator's position is stored once per process of the writing layout
  (`process_<i>-of-<n>.json`) and read back under the reading layout's names. The
  training pipeline's position does not depend on the layout (every process of every
  layout is at the same index of the same global stream), so process 0's state is
  copied to every name the new layout reads.
  """
  step_dir = pathlib.Path(target) / "checkpoints" / str(step)
  shutil.copytree(pathlib.Path(source) / "checkpoints" / str(step), step_dir)
  iterator_dir = step_dir / "data_iterator"
  written = sorted(iterator_dir.glob("process_*-of-*.json"))
  for i in range(num_processes):
    wanted = iterator_dir / f"process_{i}-of-{num_processes}.json"
    if not wanted.exists():
      shutil.copy(written[0], wanted)


def _assert_close(got: dict, want: dict, steps) -> None:
  got_trace = np.array([got[s] for s in steps])
  want_trace = np.array([want[s] for s in steps])
  np.testing.assert_allclose(got_trace, want_trace, rtol=RTOL,
                             err_msg=f"loss traces differ over steps {list(steps)}")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """Work directories of the uninterrupted runs on both layouts."""
  root = tmp_path_factory.mktemp("multihost")
  tfds_dir = root / "tfds"
  config = load_config("tiny")
  with config.unlocked():
    config.data.tfds_dir = str(tfds_dir)
  # Build the data once here, so the concurrent runs below only read it.
  train.prepare_run_data(config, root / "prepare")
  dirs = {"1x8": root / "single", "2x4": root / "multi"}
  # Neither run is CPU-bound all the time (the 2-process one waits on its collectives),
  # so running them side by side shortens the test.
  with concurrent.futures.ThreadPoolExecutor(2) as pool:
    futures = [pool.submit(_train, dirs["1x8"], 1, 8, tfds_dir),
               pool.submit(_train, dirs["2x4"], 2, 4, tfds_dir)]
    for f in futures:
      f.result()
  return root, tfds_dir, dirs


def test_two_processes_train_like_one_process_with_as_many_devices(runs):
  _, _, dirs = runs
  single, multi = _losses(dirs["1x8"]), _losses(dirs["2x4"])
  assert sorted(single) == sorted(multi) == list(range(1, STEPS + 1))
  assert multi[1] == pytest.approx(single[1], rel=1e-6)  # Same data, same init.
  _assert_close(multi, single, range(1, STEPS + 1))
  # Only process 0 writes metrics; both processes wrote their data-iterator state.
  iterator_files = sorted(p.name for p in (dirs["2x4"] / "checkpoints" / str(STEPS) /
                                           "data_iterator").glob("*.json"))
  assert iterator_files == ["process_0-of-2.json", "process_1-of-2.json"]


def test_checkpoints_move_between_process_layouts(runs):
  root, tfds_dir, dirs = runs
  resumed = {"1x8->2x4": root / "single_to_multi", "2x4->1x8": root / "multi_to_single"}
  _start_from_checkpoint(dirs["1x8"], resumed["1x8->2x4"], RESUME_STEP, 2)
  _start_from_checkpoint(dirs["2x4"], resumed["2x4->1x8"], RESUME_STEP, 1)
  with concurrent.futures.ThreadPoolExecutor(2) as pool:
    futures = [pool.submit(_train, resumed["1x8->2x4"], 2, 4, tfds_dir),
               pool.submit(_train, resumed["2x4->1x8"], 1, 8, tfds_dir)]
    for f in futures:
      f.result()
  after = range(RESUME_STEP + 1, STEPS + 1)
  for name, source in (("1x8->2x4", "1x8"), ("2x4->1x8", "2x4")):
    got = _losses(resumed[name])
    assert sorted(got) == list(after), name
    _assert_close(got, _losses(dirs[source]), after)

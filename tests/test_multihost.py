"""Multi-process training on one machine: processes joined through `jax.distributed`.

2 processes x 4 CPU devices must train exactly like 1 process x 8 devices (same global
batches, same sharded step; only the all-reduce implementation differs), checkpoints
must move between the two layouts, and a SIGTERM to one process must stop both at the
same step with a checkpoint. Every run is a `dgi train` subprocess; the multi-process
ones are started by `launch/local_multihost.sh`, except the preemption test's, which
signals one process of the two.
"""

import concurrent.futures
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import portpicker
import pytest

from conftest import REPO_ROOT, load_config
from dgi_jax import checkpointing, metrics_log, run_setup

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


def _env():
  # Compiling dominates runs this short, and LLVM's optimisation passes take half of it;
  # every run here compiles the same way, so the comparisons are unaffected.
  return dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_backend_optimization_level=0")


def _train_flags(workdir, tfds_dir, extra=()):
  return ["--config", str(REPO_ROOT / "configs" / "tiny.py"), "--workdir", str(workdir),
          f"--config.data.tfds_dir={tfds_dir}", *OVERRIDES, *extra]


def _train(workdir, num_processes: int, local_devices: int, tfds_dir, extra=()) -> None:
  """Runs `dgi train` as `num_processes` processes with `local_devices` CPU devices each.

  Several processes go through `launch/local_multihost.sh`, so the launcher is tested too.
  """
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  env = _env()
  train_flags = _train_flags(workdir, tfds_dir, extra)
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
  lines = (pathlib.Path(workdir) / metrics_log.METRICS_FILE).read_text().splitlines()
  return {r["step"]: r["total"] for r in map(json.loads, lines) if r["kind"] == "train"}


def _start_from_checkpoint(source, target, step: int) -> None:
  """Copies `source`'s checkpoint `step`, as written, into a fresh work directory `target`.

  The data iterator's files keep the writing layout's names (`process_<i>-of-<n>.json`);
  restoring them under another process count is the checkpointer's job.
  """
  step_dir = pathlib.Path(target) / "checkpoints" / str(step)
  shutil.copytree(pathlib.Path(source) / "checkpoints" / str(step), step_dir)


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
  run_setup.prepare_run_data(config, root / "prepare")
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
  _start_from_checkpoint(dirs["1x8"], resumed["1x8->2x4"], RESUME_STEP)
  _start_from_checkpoint(dirs["2x4"], resumed["2x4->1x8"], RESUME_STEP)
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
    # Resumed from the copied step, not quarantined and restarted.
    assert not (resumed[name] / checkpointing.QUARANTINE_SUBDIR).exists(), name
    assert "Resumed from step 10" in _process_0_log(resumed[name]), name
  # Each run's checkpoints carry its own layout's iterator files.
  assert _iterator_files(resumed["1x8->2x4"], STEPS) == ["process_0-of-2.json",
                                                         "process_1-of-2.json"]
  assert _iterator_files(resumed["2x4->1x8"], STEPS) == ["process_0-of-1.json"]


def test_history_items_train_alike_on_two_processes_and_resume_across_layouts(runs):
  """Requests reading history items through the refreshed table (every 7 steps, so the
  step-10 checkpoint holds the step-7 table): every process computes and places the same
  table, and it travels with the checkpoint to the other layout."""
  root, tfds_dir, _ = runs
  extra = ("--config.data.history_repr=codes", "--config.train.history_refresh_every=7")
  single, multi, resumed = (root / "codes_1x8", root / "codes_2x4", root / "codes_1x8_2x4")
  with concurrent.futures.ThreadPoolExecutor(2) as pool:
    futures = [pool.submit(_train, single, 1, 8, tfds_dir, extra),
               pool.submit(_train, multi, 2, 4, tfds_dir, extra)]
    for f in futures:
      f.result()
  _assert_close(_losses(multi), _losses(single), range(1, STEPS + 1))
  _start_from_checkpoint(single, resumed, RESUME_STEP)
  _train(resumed, 2, 4, tfds_dir, extra)
  after = range(RESUME_STEP + 1, STEPS + 1)
  assert sorted(_losses(resumed)) == list(after)
  _assert_close(_losses(resumed), _losses(single), after)


def _iterator_files(workdir, step: int) -> list:
  return sorted(p.name for p in (pathlib.Path(workdir) / "checkpoints" / str(step) /
                                 "data_iterator").glob("*.json"))


def _process_0_log(workdir) -> str:
  logs = pathlib.Path(workdir) / "logs"
  log = logs / "process_0.log" if (logs / "process_0.log").exists() else logs / "launch.log"
  return log.read_text()


def _wait_for_logged_step(workdir, step: int, processes, timeout_s: float = RUN_TIMEOUT_S):
  """Blocks until process 0's metrics.jsonl reaches `step` (training is then under way)."""
  metrics = pathlib.Path(workdir) / metrics_log.METRICS_FILE
  deadline = time.time() + timeout_s
  while time.time() < deadline:
    if any(p.poll() is not None for p in processes):
      return  # The caller reports the exit codes and logs.
    if metrics.exists():
      lines = metrics.read_text().splitlines()
      if lines and json.loads(lines[-1])["step"] >= step:
        return
    time.sleep(0.05)


def test_sigterm_to_one_process_stops_both_at_the_same_step(runs):
  """A SIGTERM to process 1 alone: both save the same step, exit 0, and the resumed run
  continues the uninterrupted run's loss trace.

  JAX's preemption service (started by `jax.distributed.initialize`) catches the signal;
  its listener polls for it once a second, then `reached_preemption_sync_point` turns True
  on every process at the same step. Training runs at about 1 step/s here, so the stop
  lands within a few steps of the signal, well before the end.
  """
  root, tfds_dir, dirs = runs
  workdir = root / "preempted"
  log_dir = workdir / "logs"
  log_dir.mkdir(parents=True)
  env = _env()
  env["XLA_FLAGS"] += " --xla_force_host_platform_device_count=4"
  port = portpicker.pick_unused_port()
  processes = []
  for i in range(2):
    with (log_dir / f"process_{i}.log").open("w") as log:
      processes.append(subprocess.Popen(
          [sys.executable, "-m", "dgi_jax.main", "train", *_train_flags(workdir, tfds_dir),
           f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
           f"--process_id={i}"],
          cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT))
  try:
    signal_step = 3
    _wait_for_logged_step(workdir, signal_step, processes)
    processes[1].send_signal(signal.SIGTERM)
    codes = [p.wait(timeout=RUN_TIMEOUT_S) for p in processes]
  finally:
    for p in processes:
      if p.poll() is None:
        p.kill()
        p.wait()
  logs = [(log_dir / f"process_{i}.log").read_text() for i in range(2)]
  assert codes == [0, 0], "\n".join(f"--- process {i} (exit {c}):\n{log[-3000:]}"
                                    for i, (c, log) in enumerate(zip(codes, logs)))
  assert "SIGTERM caught" in logs[1] and "SIGTERM caught" not in logs[0]
  checkpointer = checkpointing.Checkpointer(workdir, read_only=True)
  saved = checkpointer.latest_step()
  checkpointer.close()
  assert signal_step <= saved < STEPS
  assert f"SIGTERM: saved step {saved}" in logs[0]
  assert max(_losses(workdir)) == saved  # Process 0 stopped at the saved step.
  # Both processes saved the iterator position of that same step.
  files = [pathlib.Path(workdir) / "checkpoints" / str(saved) / "data_iterator" / name
           for name in ("process_0-of-2.json", "process_1-of-2.json")]
  assert files[0].read_text() == files[1].read_text()

  _train(workdir, 2, 4, tfds_dir)  # Resume to the end.
  got = _losses(workdir)
  assert sorted(got) == list(range(1, STEPS + 1))
  _assert_close(got, _losses(dirs["2x4"]), range(1, STEPS + 1))
  assert f"Resumed from step {saved}" in _process_0_log(workdir)

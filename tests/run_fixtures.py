"""A tiny trained work directory shared by the tests, and `dgi` run in-process.

`tiny_run` trains once per session (configs/tiny.py: 20 steps, checkpoints 10 and 20,
validation at both, TFDS files outside the work directory); tests that change a work
directory take a copy (`run_copy`). Its best checkpoint by validation hit@10 is the
latest, step 20 (by a wide margin), so the serving commands try step 20 first, then 10.
`dgi(...)` runs `dgi_jax.main.main()` in this process, which spares each case the
seconds of importing JAX in a subprocess; signal and lock tests use subprocesses.
"""

import hashlib
import json
import pathlib
import shutil
import signal
import subprocess
import sys
import time
import types

import pytest

from conftest import REPO_ROOT, load_config
from dgi_jax import evaluate, run_lock, train
from dgi_jax import main as main_lib

STEPS = 20


def tiny_config(tfds_dir, **train_fields):
  """configs/tiny.py with its TFDS files under `tfds_dir` (20 steps, a checkpoint every 10,
  a metrics line every 5), then `train_fields`."""
  config = load_config("tiny")
  with config.unlocked():
    config.data.tfds_dir = str(tfds_dir)
    config.train.update(dict(num_steps=STEPS, checkpoint_every=10, log_every=5))
    config.train.update(train_fields)
  return config


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
  """A finished tiny run: .workdir (checkpoints 10, 20, validated at both), .tfds_dir,
  .config (with which it trained, `dgi train`'s validation included)."""
  root = tmp_path_factory.mktemp("tiny_run")
  config = tiny_config(root / "tfds", eval_every=10)
  train.train_and_evaluate(config, root / "run",
                           evaluate_fn=evaluate.make_validation_fn(config))
  return types.SimpleNamespace(workdir=root / "run", tfds_dir=root / "tfds", config=config)


@pytest.fixture
def run_copy(tiny_run, tmp_path):
  """A copy of the tiny run's work directory, for a test to change."""
  return pathlib.Path(shutil.copytree(tiny_run.workdir, tmp_path / "run"))


def snapshot(directory) -> dict:
  """Relative path -> content digest of every file (the lock file aside: each `dgi train`
  writes its pid there, which is not data)."""
  directory = pathlib.Path(directory)
  if not directory.exists():
    return {}
  return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
          for p in sorted(directory.rglob("*"))
          if p.is_file() and p.name != run_lock.LOCK_FILE}


def write_jsonl(path, records) -> pathlib.Path:
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text("".join(json.dumps(r) + "\n" for r in records))
  return path


def write_dataset(directory, num_items: int = 60, num_train: int = 96,
                  num_eval: int = 16) -> pathlib.Path:
  """A small dataset in the generic JSONL format that the tiny config trains on."""
  colours = ["red", "blue", "green", "black", "white", "amber"]
  kinds = ["lamp", "mug", "chair", "scarf", "kettle", "notebook", "candle", "pillow"]
  items = [{"item_id": f"it{i}", "text": f"{colours[i % 6]} {kinds[i % 8]} model {i}"}
           for i in range(num_items)]

  def requests(n, offset):
    return [{"query": f"{colours[(i + offset) % 6]} {kinds[(i + offset) % 8]}",
             "history": [f"it{(i + offset + 1) % num_items}"],
             "item_id": f"it{(i + offset) % num_items}"} for i in range(n)]

  directory = pathlib.Path(directory)
  write_jsonl(directory / "items.jsonl", items)
  write_jsonl(directory / "train.jsonl", requests(num_train, 0))
  write_jsonl(directory / "valid.jsonl", requests(num_eval, 7))
  write_jsonl(directory / "test.jsonl", requests(num_eval, 13))
  return directory


@pytest.fixture
def dgi(capsys, monkeypatch):
  """`dgi(*args)` -> (exit status, stdout, stderr) of `dgi_jax.main.main()` in-process."""
  monkeypatch.chdir(REPO_ROOT)  # Config paths are relative to the repository.

  def run(*args):
    monkeypatch.setattr(sys, "argv", ["dgi", *map(str, args)])
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
      main_lib.main()
    out, err = capsys.readouterr()
    code = exit_info.value.code
    return (0 if code is None else code), out, err

  return run


def error_lines(err: str):
  """The lines of stderr that report an error (progress bars and warnings aside)."""
  lines = err.replace("\r", "\n").splitlines()
  return [line for line in lines if "error" in line.lower() or "Traceback" in line]


def start_training(tfds_dir, workdir, steps: int) -> subprocess.Popen:
  """`dgi train` of the tiny config in a subprocess (signal and lock tests), logging every
  step and checkpointing every 5."""
  command = [sys.executable, "-m", "dgi_jax.main", "train", "--config",
             str(REPO_ROOT / "configs/tiny.py"), "--workdir", str(workdir),
             f"--config.data.tfds_dir={tfds_dir}", f"--config.train.num_steps={steps}",
             "--config.train.log_every=1", "--config.train.checkpoint_every=5"]
  # As from a terminal: Ctrl-C reaches the run even where pytest itself was started with
  # SIGINT ignored (a background job of a shell, a pytest-xdist worker), which a child
  # inherits and `PreemptionGuard` then leaves alone.
  return subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True,
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def wait_for_step(process, workdir, step, timeout=240) -> None:
  """Blocks until metrics.jsonl reports `step` (the run is then mid-training)."""
  metrics = pathlib.Path(workdir) / "metrics.jsonl"
  deadline = time.time() + timeout
  while time.time() < deadline:
    if process.poll() is not None:
      pytest.fail(f"training exited early:\n{process.stdout.read()}")
    lines = metrics.read_text().splitlines() if metrics.exists() else []
    if lines and json.loads(lines[-1])["step"] >= step:
      return
    time.sleep(0.05)
  process.kill()
  pytest.fail("training did not reach the step in time")

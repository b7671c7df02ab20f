"""The launch scripts: syntax, argument checks, the TPU pod commands (dry run), and the
local multi-process launcher's failure handling. (A real local multi-process training run
goes through the launcher in test_multihost.py.)"""

import subprocess

import pytest

from conftest import REPO_ROOT

LAUNCH = REPO_ROOT / "launch"
SCRIPTS = ("local_multihost.sh", "tpu_pod.sh", "gpu.sh")


def _bash(script, *args, timeout=60):
  return subprocess.run(["bash", str(LAUNCH / script), *map(str, args)], cwd=REPO_ROOT,
                        capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("script", SCRIPTS)
def test_scripts_parse_and_document_their_usage(script):
  assert subprocess.run(["bash", "-n", str(LAUNCH / script)]).returncode == 0
  text = (LAUNCH / script).read_text()
  assert "set -euo pipefail" in text
  help_text = _bash(script, "-h")
  assert help_text.returncode == 0 and "usage:" in help_text.stdout


def test_tpu_pod_dry_run_prints_the_gcloud_commands():
  result = _bash("tpu_pod.sh", "--name", "dgi-pod", "--zone", "us-central2-b",
                 "--accelerator-type", "v4-64", "--workdir", "gs://bucket/run",
                 "--config", "configs/pod_large_batch.py", "--dry-run", "--",
                 "--config.train.num_steps=100")
  assert result.returncode == 0, result.stderr
  lines = result.stdout.splitlines()
  commands = [l for l in lines if l.startswith("gcloud compute tpus tpu-vm")]
  verbs = [c.split()[4] for c in commands]
  assert verbs == ["describe", "create", "scp", "ssh", "ssh"], lines
  create = commands[1]
  assert "dgi-pod" in create and "--zone=us-central2-b" in create
  assert "--accelerator-type=v4-64" in create
  for command in commands[2:]:  # Copy, install and train on every worker.
    assert "--worker=all" in command
  assert ".[tpu]" in commands[3]
  train = commands[4]
  for part in ("dgi_jax.main train", "--config=configs/pod_large_batch.py",
               "--workdir=gs://bucket/run", "--config.train.distributed=true",
               "--config.train.num_steps=100"):
    assert part in train


@pytest.mark.parametrize("args, message", [
    (("--zone", "z", "--workdir", "gs://b/r"), "--name is required"),
    (("--name", "n", "--zone", "z", "--workdir", "/local/dir"), "must be a gs:// path"),
    (("--name", "n", "--zone", "z", "--workdir", "gs://b/r", "--config", "configs/nope.py"),
     "no config"),
    (("--name", "n", "--zone", "z", "--workdir", "gs://b/r", "--bogus"), "unknown flag"),
])
def test_tpu_pod_rejects_bad_arguments(args, message):
  result = _bash("tpu_pod.sh", *args, "--dry-run")
  assert result.returncode == 2 and message in result.stderr


def test_local_launcher_fails_when_a_process_fails(tmp_path):
  # `dgi train` without --workdir stops at flag checking, in every process.
  result = _bash("local_multihost.sh", "-n", "2", "-d", "1", "-l", tmp_path, "--",
                 "--config", REPO_ROOT / "configs" / "tiny.py", timeout=120)
  assert result.returncode != 0
  assert "dgi train needs --workdir" in result.stderr
  assert sorted(p.name for p in tmp_path.iterdir()) == ["process_0.log", "process_1.log"]

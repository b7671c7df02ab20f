"""The `dgi` command line: `dgi <command> --config CONFIG --workdir DIR [--config.a.b=v ...]`.

Thin by design: parse flags and the config, optionally join a multi-host job, then call one
library function.
"""

import sys

from absl import app, flags, logging
from ml_collections import config_flags

COMMANDS = ("train", "parity")
USAGE = f"usage: dgi {{{'|'.join(COMMANDS)}}} [flags]; `dgi <command> --help` lists them"

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", "configs/default.py", "Config file (Python, `get_config()`); override fields "
    "with --config.section.field=value.", lock_config=True)
flags.DEFINE_string("workdir", None, "Work directory: checkpoints, metrics, data, plots.")
flags.DEFINE_string("torch_checkpoint", None,
                    "parity: a PyTorch state_dict file to start both models from.")


def _maybe_initialize_distributed(config) -> None:
  import jax  # pylint: disable=g-import-not-at-top
  if config.train.distributed:
    jax.distributed.initialize()


def _train(config) -> None:
  from dgi_jax import train  # pylint: disable=g-import-not-at-top
  if not FLAGS.workdir:
    raise app.UsageError("dgi train needs --workdir")
  _maybe_initialize_distributed(config)
  summary = train.train_and_evaluate(config, FLAGS.workdir)
  print({k: round(v, 5) for k, v in summary.items()})


def _parity(config) -> int:
  from dgi_jax.parity import compare  # pylint: disable=g-import-not-at-top
  rows, ok = compare.run_parity(config, torch_checkpoint=FLAGS.torch_checkpoint)
  print(compare.format_table(rows))
  print("PARITY OK" if ok else "PARITY FAILED: differences above tolerance")
  return 0 if ok else 1


def _run(argv, command: str) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  config = FLAGS.config
  if command == "train":
    _train(config)
    return 0
  return _parity(config)


def main() -> None:
  """Console entry point (`dgi`)."""
  if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
    print(USAGE, file=sys.stderr)
    sys.exit(2)
  command = sys.argv.pop(1)
  # Orbax and TFDS log every save and read at INFO through absl.
  logging.set_verbosity(logging.WARNING)
  app.run(lambda argv: sys.exit(_run(argv, command)))


if __name__ == "__main__":
  main()

"""The `dgi` command line: `dgi <command> --config CONFIG --workdir DIR [--config.a.b=v ...]`.

  dgi train  --config CONFIG --workdir DIR      train (validation every train.eval_every)
  dgi parity --config CONFIG                    JAX vs PyTorch reference
  dgi eval   --workdir DIR [--split test] [--beam N] [--k K]
  dgi search --workdir DIR "query text" [--history id,id] [--k 10] [--beam N]
  dgi index  --workdir DIR --out sids.jsonl [--add items.jsonl]
  dgi benchmark --dataset beauty|scifact|DIR --workdir DIR [--methods all|a,b]
                [--data_root ../shared/data] [--results_dir DIR] [--config CONFIG]
eval, search and index read the config, tokenizer and params from DIR's checkpoint (the
best by validation, else the latest); they take no --config.

Thin by design: parse flags and the config, optionally join a multi-host job, then call one
library function.
"""

import sys

from absl import app, flags, logging
from ml_collections import config_flags

COMMANDS = ("train", "parity", "eval", "search", "index", "benchmark")
# Commands that serve a trained work directory; their config comes from its checkpoint.
SERVING_COMMANDS = ("eval", "search", "index")
USAGE = f"usage: dgi {{{'|'.join(COMMANDS)}}} [flags]; `dgi <command> --help` lists them"

FLAGS = flags.FLAGS
_COMMAND_ARGS = []  # The command's own arguments, as typed.
config_flags.DEFINE_config_file(
    "config", "configs/default.py", "Config file (Python, `get_config()`); override fields "
    "with --config.section.field=value.", lock_config=True)
flags.DEFINE_string("workdir", None, "Work directory: checkpoints, metrics, data, plots.")
flags.DEFINE_string("torch_checkpoint", None,
                    "parity: a PyTorch state_dict file to start both models from.")
flags.DEFINE_enum("split", "test", ["test", "validation"], "eval: the request split.")
flags.DEFINE_integer("beam", None, "eval, search: beam size (default: the checkpoint's "
                     "config.eval.beam_size).")
flags.DEFINE_integer("k", None, "eval: items ranked per request (default config.eval.k); "
                     "search: items shown (default 10).")
flags.DEFINE_string("history", "", "search: the user's history, item ids oldest first, "
                    "comma-separated.")
flags.DEFINE_string("out", None, "index: the item -> SID table to write (JSONL).")
flags.DEFINE_string("add", None, "index: items.jsonl of new items to quantize and include.")
flags.DEFINE_string("dataset", None, "benchmark: 'beauty', 'scifact' (converted from "
                    "--data_root) or a directory in the generic JSONL format.")
flags.DEFINE_string("methods", "all", "benchmark: 'all' or comma-separated method names "
                    "(bm25, dense, two_stage, dgi, dgi_ste, dgi_untied, dgi_ste_untied, "
                    "dgi_dot, dgi_none).")
flags.DEFINE_string("data_root", "../shared/data", "benchmark: folder holding the raw "
                    "datasets (amazon_beauty/, scifact/).")
flags.DEFINE_string("results_dir", None, "benchmark: where results.md and plots go "
                    "(default --workdir).")
# Joining a multi-process job. A launcher (launch/local_multihost.sh, a cluster scheduler)
# passes all three; TPU pods instead set --config.train.distributed=true and auto-detect.
flags.DEFINE_string("coordinator_address", None,
                    "host:port of process 0's coordinator service (multi-process jobs).")
flags.DEFINE_integer("num_processes", None, "Processes in the job (with --coordinator_address).")
flags.DEFINE_integer("process_id", None, "This process's index in [0, --num_processes).")
flags.DEFINE_integer("local_device_count", None,
                     "CPU simulation: run on this many CPU devices in this process (implies "
                     "the CPU platform; an alternative to XLA_FLAGS="
                     "--xla_force_host_platform_device_count).")


def _maybe_initialize_distributed(config) -> None:
  """Sets up devices and joins a multi-process job; must run before JAX touches a device.

  Explicit coordinator flags come from a launcher; `train.distributed` alone is for TPU pods
  (and other clusters JAX detects), where `jax.distributed.initialize()` needs no arguments.
  """
  import jax  # pylint: disable=g-import-not-at-top
  joining = (FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  if any(v is not None for v in joining) and any(v is None for v in joining):
    raise app.UsageError("--coordinator_address, --num_processes and --process_id go "
                         "together")
  if FLAGS.local_device_count:
    jax.config.update("jax_platforms", "cpu")
    jax.config.update("jax_num_cpu_devices", FLAGS.local_device_count)
  if jax.config.jax_platforms == "cpu":
    # Cross-process computations between CPU clients need a collectives backend; without
    # one the first fails ("Multiprocess computations aren't implemented on the CPU
    # backend"). gloo (TCP, through the coordinator) is this JAX's default, pinned here
    # because older releases defaulted to none.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if FLAGS.coordinator_address is not None:
    jax.distributed.initialize(coordinator_address=FLAGS.coordinator_address,
                               num_processes=FLAGS.num_processes,
                               process_id=FLAGS.process_id)
  elif config.train.distributed:
    jax.distributed.initialize()


def _train(config) -> None:
  from dgi_jax import train  # pylint: disable=g-import-not-at-top
  if not FLAGS.workdir:
    raise app.UsageError("dgi train needs --workdir")
  _maybe_initialize_distributed(config)
  evaluate_fn = None
  if config.train.eval_every > 0:
    from dgi_jax import evaluate  # pylint: disable=g-import-not-at-top
    evaluate_fn = evaluate.make_validation_fn(config)
  summary = train.train_and_evaluate(config, FLAGS.workdir, evaluate_fn=evaluate_fn)
  print({k: round(v, 5) for k, v in summary.items()})


def _parity(config) -> int:
  from dgi_jax.parity import compare  # pylint: disable=g-import-not-at-top
  rows, ok = compare.run_parity(config, torch_checkpoint=FLAGS.torch_checkpoint)
  print(compare.format_table(rows))
  print("PARITY OK" if ok else "PARITY FAILED: differences above tolerance")
  return 0 if ok else 1


def _eval() -> None:
  from dgi_jax import evaluate  # pylint: disable=g-import-not-at-top
  report, step, which, paths = evaluate.evaluate_workdir(FLAGS.workdir, FLAGS.split,
                                                         FLAGS.beam, FLAGS.k)
  print(f"checkpoint: step {step} ({which})")
  print(evaluate.format_report(report))
  print("wrote " + ", ".join(str(p) for p in paths))


def _search(query: str) -> None:
  from dgi_jax import retrieval, workdir  # pylint: disable=g-import-not-at-top
  history = [i.strip() for i in FLAGS.history.split(",") if i.strip()]
  if not query and not history:
    raise app.UsageError("dgi search needs a query text, a --history, or both")
  trained = workdir.load_trained(FLAGS.workdir)
  retriever = retrieval.Retriever(trained.model, trained.params, trained.run_data,
                                  trained.config)
  hits = retriever.search_text(query, history, FLAGS.beam or trained.config.eval.beam_size,
                               FLAGS.k or 10)
  print(f"{'rank':>4}  {'beam score':>10}  {'cosine':>6}  {'SID':<14} item_id  text")
  for hit in hits:
    sid = "-".join(str(c) for c in hit["sid"])
    print(f"{hit['rank']:>4}  {hit['beam_score']:>10.4f}  {hit['cosine']:>6.3f}  "
          f"{sid:<14} {hit['item_id']}  {hit['text']}")
  if not hits:
    print("(no items)")


def _index() -> None:
  from dgi_jax import retrieval, workdir  # pylint: disable=g-import-not-at-top
  if not FLAGS.out:
    raise app.UsageError("dgi index needs --out")
  new_items = retrieval.read_items_file(FLAGS.add) if FLAGS.add else []
  trained = workdir.load_trained(FLAGS.workdir)
  retriever = retrieval.Retriever(trained.model, trained.params, trained.run_data,
                                  trained.config)
  retriever.add_items([i.text for i in new_items], [i.item_id for i in new_items])
  path = retrieval.write_sid_table(FLAGS.out, retriever.item_ids, retriever.sids)
  stats = retriever.stats
  print(f"wrote {path}: {stats['num_items']} items ({len(new_items)} added), "
        f"{stats['num_distinct_sids']} distinct SIDs, unique-SID share "
        f"{stats['unique_sid_share']:.3f}")


def _serve(argv, command: str) -> int:
  """eval / search / index; problems with the inputs end in one error line, exit 1."""
  from dgi_jax import retrieval, workdir  # pylint: disable=g-import-not-at-top
  from dgi_jax.data import jsonl_format  # pylint: disable=g-import-not-at-top
  # Orbax warns about every read-only checkpoint manager it opens.
  logging.set_verbosity(logging.ERROR)
  if FLAGS["config"].present:
    raise app.UsageError(f"dgi {command} takes its config from the checkpoint; drop "
                         "--config")
  if not FLAGS.workdir:
    raise app.UsageError(f"dgi {command} needs --workdir")
  if command != "search" and len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  try:
    if command == "eval":
      _eval()
    elif command == "search":
      _search(" ".join(argv[1:]))
    else:
      _index()
  except (workdir.WorkdirError, retrieval.ItemError,
          jsonl_format.DatasetFormatError) as e:
    print(f"dgi {command}: error: {e}", file=sys.stderr)
    return 1
  return 0


def _benchmark_config():
  """--config if given, else configs/benchmark_<dataset>.py, else configs/benchmark.py."""
  if FLAGS["config"].present:
    return FLAGS.config
  import pathlib  # pylint: disable=g-import-not-at-top
  import runpy  # pylint: disable=g-import-not-at-top
  named = pathlib.Path("configs") / f"benchmark_{FLAGS.dataset}.py"
  path = named if named.is_file() else pathlib.Path("configs") / "benchmark.py"
  if not path.is_file():
    raise app.UsageError(f"no {path} here: run from the repository root or pass --config")
  return runpy.run_path(str(path))["get_config"]()


def _benchmark(command_line) -> int:
  from dgi_jax.benchmark import runner  # pylint: disable=g-import-not-at-top
  if not FLAGS.workdir or not FLAGS.dataset:
    raise app.UsageError("dgi benchmark needs --dataset and --workdir")
  config = _benchmark_config()
  if "benchmark" not in config:
    raise app.UsageError("the config has no `benchmark` section; use configs/benchmark*.py")
  try:
    path = runner.run_benchmark(FLAGS.dataset, FLAGS.methods, config, FLAGS.workdir,
                                FLAGS.data_root, FLAGS.results_dir, command_line)
  except runner.BenchmarkInterrupted as e:  # A preemption: exit 0, like `dgi train`.
    print(f"dgi benchmark: {e}", file=sys.stderr)
    return 0
  except (ValueError, FileNotFoundError) as e:
    print(f"dgi benchmark: error: {e}", file=sys.stderr)
    return 1
  print(f"wrote {path}")
  return 0


def _run(argv, command: str) -> int:
  if command in SERVING_COMMANDS:
    return _serve(argv, command)
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if command == "benchmark":
    return _benchmark(["dgi", command] + _COMMAND_ARGS)
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
  _COMMAND_ARGS[:] = sys.argv[1:]  # For results files that quote their command line.
  # Orbax and TFDS log every save and read at INFO through absl.
  logging.set_verbosity(logging.WARNING)
  app.run(lambda argv: sys.exit(_run(argv, command)))


if __name__ == "__main__":
  main()

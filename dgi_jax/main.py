"""The `dgi` command line: `dgi <command> --config CONFIG --workdir DIR [--config.a.b=v ...]`.

  dgi train  --config CONFIG --workdir DIR      train (validation every train.eval_every)
  dgi parity --config CONFIG                    JAX vs PyTorch reference
  dgi eval   --workdir DIR [--split test] [--beam N] [--k K]
  dgi search --workdir DIR "query text" [--history id,id] [--k 10] [--beam N]
  dgi index  --workdir DIR --out sids.jsonl [--add items.jsonl]
  dgi benchmark --dataset beauty|scifact|DIR --workdir DIR [--methods all|a,b]
                [--data_root ../shared/data] [--results_dir DIR] [--config CONFIG]
eval, search and index read the config, tokenizer and params from DIR's checkpoint (the
best by validation, else the latest readable one); they take no --config. `dgi train` on a
work directory with checkpoints and without --config resumes with the saved config.

Thin by design: parse flags and the config, optionally join a multi-host job, then call one
library function. Expected errors (bad flags, config values, input files, work
directories: `errors.UserError` and a file system that refuses a write) end in one
`dgi <command>: error: ...` line and exit status 1; a traceback means a bug.
"""

import functools
import logging as std_logging
import os
import re
import sys
import warnings

from absl import app, flags, logging
from ml_collections import config_flags

from dgi_jax import config_checks, config_files, errors, host_memory

COMMANDS = ("train", "parity", "eval", "search", "index", "benchmark")
# Commands that serve a trained work directory; their config comes from its checkpoint.
SERVING_COMMANDS = ("eval", "search", "index")
# Commands that train: their XLA calls reuse host memory (`host_memory`).
TRAINING_COMMANDS = ("train", "benchmark")
USAGE = f"usage: dgi {{{'|'.join(COMMANDS)}}} [flags]; `dgi <command> --help` lists them"
HELP_ARGS = ("--help", "-h", "--helpshort", "--helpfull", "-?")
DEFAULT_CONFIG = "configs/default.py"
_LISTED_FIELDS = 12  # Fields an unknown-field error lists when none is close.
CONFIG_HELP = ("Config file (Python, `get_config()`); override fields with "
               "--config.section.field=value.")
# Each command's flags (the others are refused) and its usage line.
COMMAND_FLAGS = {
    "train": ("config", "workdir", "allow_dataset_change", "coordinator_address",
              "num_processes", "process_id", "local_device_count"),
    "parity": ("config", "torch_checkpoint"),
    "eval": ("workdir", "split", "beam", "k", "ranking", "cosine_weight", "exclude_history",
             "candidate_level", "sid_rerank_depth", "candidate_budget", "popularity_weight"),
    "search": ("workdir", "history", "k", "beam"),
    "index": ("workdir", "out", "add"),
    "benchmark": ("dataset", "workdir", "methods", "data_root", "results_dir", "config"),
}
COMMAND_USAGE = {
    "train": ("dgi train --workdir DIR [--config CONFIG] [--config.SECTION.FIELD=VALUE ...]",
              "Trains a run in DIR, or resumes it from its latest checkpoint. Without "
              "--config a work directory with checkpoints resumes with its own config."),
    "parity": ("dgi parity [--config CONFIG] [--torch_checkpoint FILE]",
               "Compares the JAX model with the PyTorch reference."),
    "eval": ("dgi eval --workdir DIR [--split test|validation] [--beam N] [--k K] "
             "[--ranking beam|cosine|blend|sid] [--cosine_weight W] [--[no]exclude_history] "
             "[--candidate_level T] [--sid_rerank_depth R] [--candidate_budget C] "
             "[--popularity_weight W]",
             "Evaluates DIR's best (else latest) checkpoint; writes eval_<split>.json and "
             "plots/, their names adding each flag that changes the run's own settings."),
    "search": ('dgi search --workdir DIR ["query text"] [--history ID,ID] [--k K] [--beam N]',
               "Prints the top items of one request."),
    "index": ("dgi index --workdir DIR --out SIDS.jsonl [--add ITEMS.jsonl]",
              "Writes every item's semantic ID, with new items added."),
    "benchmark": ("dgi benchmark --dataset beauty|scifact|DIR --workdir DIR [--methods all|a,b]"
                  " [--config CONFIG]",
                  "Trains and evaluates the methods on a dataset; writes results.md."),
}

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Work directory: checkpoints, metrics, data, plots.")
flags.DEFINE_bool("allow_dataset_change", False, "train: resume although the dataset "
                  "differs from the one the checkpoint was trained on.")
flags.DEFINE_string("torch_checkpoint", None,
                    "parity: a PyTorch state_dict file to start both models from.")
flags.DEFINE_enum("split", "test", ["test", "validation"], "eval: the request split.")
flags.DEFINE_integer("beam", None, "eval, search: beam size (default: the checkpoint's "
                     "config.eval.beam_size).")
flags.DEFINE_integer("k", None, "eval: items ranked per request (default config.eval.k); "
                     "search: items shown (default 10).")
flags.DEFINE_enum("ranking", None, list(config_checks.RANKINGS),
                  "eval: order of the beams' items: 'beam' (beam score, then cosine: the "
                  "paper's), 'cosine' (over the beams' union), 'blend' (beam score + "
                  "W x cosine) or 'sid' (log P(item's whole SID) + W x cosine) (default: "
                  "the checkpoint's config.eval.ranking).")
flags.DEFINE_float("cosine_weight", None, "eval: the cosine's weight W with --ranking "
                   "blend or sid (default config.eval.cosine_weight).")
flags.DEFINE_bool("exclude_history", None, "eval: leave each request's history items out "
                  "of every ranking (default config.eval.exclude_history).")
flags.DEFINE_float("popularity_weight", None, "eval: add W x ln(1 + training popularity) "
                   "to every item's cosine in the rankings (default "
                   "config.eval.popularity_weight).", lower_bound=0.0)
flags.DEFINE_integer("candidate_level", None, "eval: stop the search at the best "
                     "prefixes of T codes and rank every item under them (0: the items of "
                     "the beams' SIDs; default config.eval.candidate_level).", lower_bound=0)
flags.DEFINE_integer("sid_rerank_depth", None, "eval: with --ranking sid, run the decoder "
                     "over the R candidates of highest cosine only (0: all; default "
                     "config.eval.sid_rerank_depth).", lower_bound=0)
flags.DEFINE_integer("candidate_budget", None, "eval: rank the items of the fewest best "
                     "beams that hold at least C of them; --beam is then the most beams "
                     "taken (0: every beam's items; default config.eval.candidate_budget).",
                     lower_bound=0)
flags.DEFINE_string("history", "", "search: the user's history, item ids oldest first, "
                    "comma-separated.")
flags.DEFINE_string("out", None, "index: the item -> SID table to write (JSONL).")
flags.DEFINE_string("add", None, "index: items.jsonl of new items to quantize and include.")
flags.DEFINE_string("dataset", None, "benchmark: 'beauty', 'scifact' (converted from "
                    "--data_root) or a directory in the generic JSONL format.")
flags.DEFINE_string("methods", "all", "benchmark: 'all' or comma-separated method names "
                    "(bm25, zero_shot, dense, two_stage, dgi, dgi_ste, dgi_untied, "
                    "dgi_ste_untied, dgi_dot, dgi_none), run in the order given.")
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
  Without a config (`dgi train` resuming without --config, away from configs/) only a
  --config.train.distributed override asks for it.
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
  elif (FLAGS["config"].override_values.get("train.distributed", False) if config is None
        else config.train.distributed):
    jax.distributed.initialize()


def _train(config, args) -> None:
  from dgi_jax import train  # pylint: disable=g-import-not-at-top
  if not FLAGS.workdir:
    raise app.UsageError("dgi train needs --workdir")
  # Before anything opens the work directory's checkpoints (which starts JAX).
  _maybe_initialize_distributed(config)
  config = _resume_config(config, args)
  evaluate_fn = None
  if config.train.eval_every > 0:
    from dgi_jax import evaluate  # pylint: disable=g-import-not-at-top
    evaluate_fn = evaluate.make_validation_fn(config)
  result = train.train_and_evaluate(config, FLAGS.workdir, evaluate_fn=evaluate_fn,
                                    allow_dataset_change=FLAGS.allow_dataset_change)
  import jax  # pylint: disable=g-import-not-at-top
  if jax.process_index() == 0:
    print(_train_summary(result, config, FLAGS.workdir))


def _resume_config(config, args):
  """With --config: `config`. Without: the work directory's saved config (if it has a
  readable checkpoint) with the --config.* overrides applied, else the default config
  (`config`; None when the default file is not here)."""
  if FLAGS["config"].present:
    return config
  from dgi_jax import trained_run  # pylint: disable=g-import-not-at-top
  saved = trained_run.saved_config(FLAGS.workdir)
  if saved is None:
    # Its error names the file.
    return config if config is not None else _loaded_config("train", args)
  print(f"using the config saved in {FLAGS.workdir}'s checkpoints (no --config given)")
  return _with_overrides(saved, "the work directory's saved config")


def _with_overrides(config, source: str):
  """`config` with the command line's --config.* overrides applied (as absl applies them
  to the --config file, which this config replaces)."""
  for path, value in FLAGS["config"].override_values.items():
    try:
      config.update_from_flattened_dict({path: value})
    except (AttributeError, KeyError) as e:
      raise errors.ConfigError(f"--config.{path}: {source} has no such field") from e
  return config


def _train_summary(result, config, workdir) -> str:
  """What a finished (or stopped) run tells: the step, the losses, the next command."""
  from dgi_jax import checkpointing  # pylint: disable=g-import-not-at-top
  summary, step, total = result.metrics, result.step, config.train.num_steps
  where = checkpointing.checkpoint_dir(workdir) / str(step)
  if not summary:  # No step ran.
    return (f"nothing to train: {where} is already at step {step} of {total}\n"
            f"next: dgi eval --workdir {workdir}")
  terms = ", ".join(f"{k} {summary[k]:.4f}" for k in ("ntp", "infonce", "global", "local",
                                                      "div") if k in summary)
  lines = [f"step {step} of {total}: loss {summary['total']:.4f} ({terms}), "
           f"{summary['steps_per_sec']:.1f} steps/s", f"checkpoint: {where}"]
  if step < total:
    lines.append("stopped early: rerun the same command to resume")
  else:
    lines.append(f"next: dgi eval --workdir {workdir}")
  return "\n".join(lines)


def _parity(config) -> int:
  from dgi_jax.parity import compare  # pylint: disable=g-import-not-at-top
  rows, ok = compare.run_parity(config, torch_checkpoint=FLAGS.torch_checkpoint)
  print(compare.format_table(rows))
  print("PARITY OK" if ok else "PARITY FAILED: differences above tolerance")
  return 0 if ok else 1


def _eval() -> None:
  from dgi_jax import evaluate  # pylint: disable=g-import-not-at-top
  report, step, which, paths = evaluate.evaluate_workdir(
      FLAGS.workdir, FLAGS.split, FLAGS.beam, FLAGS.k,
      **{name: FLAGS[name].value for name in evaluate.SEARCH_OVERRIDES})
  print(f"checkpoint: step {step} ({which})")
  print(evaluate.format_report(report))
  print("wrote " + ", ".join(str(p) for p in paths))


def _search(query: str) -> None:
  from dgi_jax import retrieval, trained_run  # pylint: disable=g-import-not-at-top
  history = [i.strip() for i in FLAGS.history.split(",") if i.strip()]
  if not query.strip() and not history:
    raise app.UsageError("dgi search needs a query text, a --history, or both")
  trained = trained_run.load_trained(FLAGS.workdir)
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
  from dgi_jax import retrieval, trained_run  # pylint: disable=g-import-not-at-top
  if not FLAGS.out:
    raise app.UsageError("dgi index needs --out")
  if os.path.isdir(FLAGS.out):
    raise app.UsageError(f"--out {FLAGS.out} is a directory; give the file to write")
  new_items = retrieval.read_items_file(FLAGS.add) if FLAGS.add else []
  trained = trained_run.load_trained(FLAGS.workdir)
  retriever = retrieval.Retriever(trained.model, trained.params, trained.run_data,
                                  trained.config)
  retriever.add_items([i.text for i in new_items], [i.item_id for i in new_items])
  path = retrieval.write_sid_table(FLAGS.out, retriever.item_ids, retriever.sids)
  stats = retriever.stats
  print(f"wrote {path}: {stats['num_items']} items ({len(new_items)} added), "
        f"{stats['num_distinct_sids']} distinct SIDs, unique-SID share "
        f"{stats['unique_sid_share']:.3f}")


def _serve(argv, command: str) -> int:
  """eval / search / index."""
  if FLAGS["config"].present or FLAGS["config"].override_values:
    raise app.UsageError(f"dgi {command} takes its config from the checkpoint; drop "
                         "--config")
  if not FLAGS.workdir:
    raise app.UsageError(f"dgi {command} needs --workdir")
  if command != "search" and len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if command == "eval":
    _eval()
  elif command == "search":
    _search(" ".join(argv[1:]))
  else:
    _index()
  return 0


def _benchmark(command_line) -> int:
  from dgi_jax.benchmark import runner  # pylint: disable=g-import-not-at-top
  if not FLAGS.workdir or not FLAGS.dataset:
    raise app.UsageError("dgi benchmark needs --dataset and --workdir")
  config = _loaded_config("benchmark", command_line[2:])
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


def _dispatch(argv, command: str, args) -> int:
  if command in SERVING_COMMANDS:
    return _serve(argv, command)
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if command == "benchmark":
    return _benchmark(["dgi", command, *args])
  if command == "train":
    # Resuming without --config needs no config file here.
    _train(_loaded_config(command, args) if FLAGS["config"].present else _default_config(), args)
    return 0
  return _parity(_loaded_config(command, args))


def _check_flags(command: str) -> None:
  """Refuses flags of other commands and values no command can use."""
  for name in sorted({n for flags_ in COMMAND_FLAGS.values() for n in flags_}):
    if name != "config" and FLAGS[name].present and name not in COMMAND_FLAGS[command]:
      raise app.UsageError(f"--{name} is not a flag of dgi {command}; `dgi {command} "
                           "--help` lists its flags")
  for name in ("k", "beam"):
    value = FLAGS[name].value
    if value is not None and value < 1:
      raise app.UsageError(f"--{name}={value}: must be >= 1")
  if FLAGS.torch_checkpoint and not os.path.isfile(FLAGS.torch_checkpoint):
    raise app.UsageError(f"--torch_checkpoint {FLAGS.torch_checkpoint}: no such file")


def _expected_error(error: BaseException):
  """The one-line message of an error the user can fix; None for a bug."""
  retrieval = sys.modules.get("dgi_jax.retrieval")  # Not imported: none of its errors.
  item_error = (retrieval.ItemError,) if retrieval else ()
  if isinstance(error, (errors.UserError, app.UsageError, *item_error)):
    return errors.one_line(error)
  disk = errors.disk_error(error)
  return None if disk is None else errors.describe_disk_error(disk)


def _fail(command: str, message: str) -> int:
  print(f"dgi {command}: error: {message}", file=sys.stderr)
  return 1


def _run(argv, command: str, args) -> int:
  """The command (`argv`: the program and the positional arguments left by the flags,
  `args`: the command's arguments as typed); an expected error ends in one line and exit
  status 1."""
  try:
    _check_flags(command)
    return _dispatch(argv, command, args)
  except KeyboardInterrupt:
    print(f"dgi {command}: aborted (Ctrl-C)", file=sys.stderr)
    return 130
  except Exception as e:  # pylint: disable=broad-except
    message = _expected_error(e)
    if message is None:
      raise
    return _fail(command, message)


# ---------------------------------------------------------------------------- flags


def _flag_value(args, name: str):
  """The value of --`name` as typed in `args` (`--name=v` or `--name v`), else None."""
  for i, arg in enumerate(args):
    if arg.startswith(f"--{name}="):
      return arg.split("=", 1)[1]
    if arg == f"--{name}" and i + 1 < len(args):
      return args[i + 1]
  return None


def _default_config_file(command: str, args) -> str:
  """The config file `command` reads without --config: configs/default.py, and for
  `dgi benchmark` the repository's configs/benchmark_<dataset>.py, else its
  configs/benchmark.py (wherever the command runs), so that --config.benchmark.*
  overrides apply without naming the file."""
  if command != "benchmark":
    return DEFAULT_CONFIG
  dataset = _flag_value(args, "dataset")
  named = config_files.path(f"benchmark_{dataset}") if dataset else None
  return str(named if named is not None and named.is_file() else config_files.path("benchmark"))


def _config_path(command: str, args) -> str:
  """The config file --config names in `args` (without a ':argument'), else the default's."""
  named = _flag_value(args, "config")
  return named.split(":", 1)[0] if named is not None else _default_config_file(command, args)


def _override_paths(args):
  """The field paths of the --config.a.b=v overrides among `args`."""
  return [m[1] for arg in args
          for m in [re.match(r"--(?:no)?config\.([^=]+)", arg)] if m]


def _config_error(command: str, error: Exception, args) -> str:
  """One line for an error of loading the config or applying an override to it: the
  missing file, the unknown field and its close matches, else the error itself."""
  path = _config_path(command, args)
  if not os.path.isfile(path):
    return f"--config {path}: no such file"
  try:
    config = config_files.load_file(path)
  except Exception as e:  # pylint: disable=broad-except
    return f"--config {path}: cannot load it ({type(e).__name__}: {errors.one_line(e)})"
  unknown = config_checks.unknown_field(config, _override_paths(args))
  if unknown is None:
    return errors.one_line(error)
  field, matches, siblings = unknown
  shown = ", ".join(siblings[:_LISTED_FIELDS]) + (", ..." if len(siblings) > _LISTED_FIELDS
                                                  else "")
  hint = (f"did you mean {' or '.join('--config.' + m for m in matches)}?" if matches
          else f"the fields there are {shown}")
  return f"--config.{field}: {path} has no such field; {hint}"


def _default_config():
  """FLAGS.config without --config: the default file's, or None when it is not here."""
  try:
    FLAGS.config.keys()
  except Exception:  # pylint: disable=broad-except
    return None
  return FLAGS.config


def _loaded_config(command: str, args):
  """FLAGS.config, whose loading errors show only when it is first read."""
  try:
    FLAGS.config.keys()
  except Exception as e:  # pylint: disable=broad-except
    raise errors.ConfigError(_config_error(command, e, args)) from None
  return FLAGS.config


def _define_config_flag(command: str, args) -> None:
  """(Re)defines --config for this command line.

  Defined here, not at import: without --config on the command line the default file is
  loaded and the overrides applied as the flag is defined, where an unknown field must
  end in an error line, not an import-time traceback; and `main` may run more than once
  in one process (tests), each time with its own overrides.
  """
  for name in [n for n in FLAGS if n == "config" or n.startswith("config.")]:
    delattr(FLAGS, name)
  config_flags.DEFINE_config_file("config", _default_config_file(command, args), CONFIG_HELP,
                                  lock_config=True)


def _parse_flags(command: str, argv):
  """absl's flag parsing, its errors as one line (absl prints usage and tracebacks)."""
  args = argv[1:]
  try:
    return FLAGS(argv)
  except flags.Error as e:
    message = (_config_error(command, e, args) if "config." in str(e) and _override_paths(args)
               else errors.one_line(e))
  except Exception as e:  # pylint: disable=broad-except
    message = _config_error(command, e, args)
  sys.exit(_fail(command, message))


def _command_help(command: str) -> str:
  usage, summary = COMMAND_USAGE[command]
  lines = [f"usage: {usage}", "", summary, "", "flags:"]
  for name in COMMAND_FLAGS[command]:
    if name == "config":
      default = ("configs/benchmark_<dataset>.py, else configs/benchmark.py"
                 if command == "benchmark" else DEFAULT_CONFIG)
      lines.append(f"  --config: {CONFIG_HELP} (default: {default})")
      continue
    flag = FLAGS[name]
    default = "" if flag.default is None else f" (default: {flag.default!r})"
    lines.append(f"  --{name}: {flag.help}{default}")
  return "\n".join(lines)


class _LibraryChatter(std_logging.Filter):
  """Drops TFDS's info and warning lines (a config dump for every dataset it opens)."""

  def filter(self, record) -> bool:
    return record.levelno >= std_logging.ERROR or "tensorflow_datasets" not in record.pathname


def _show_warning(command, message, category, filename, lineno, file=None, line=None):
  """Warnings as one `dgi <command>: warning: ...` line each."""
  del category, filename, lineno, line
  print(f"dgi {command}: warning: {errors.one_line(message)}", file=file or sys.stderr)


def _start(command: str, args) -> None:
  """Per-run setup: --config for this command line, quiet libraries, warning lines."""
  FLAGS.unparse_flags()  # A previous run in this process (tests) set values.
  try:
    _define_config_flag(command, args)
  except Exception as e:  # pylint: disable=broad-except
    sys.exit(_fail(command, _config_error(command, e, args)))
  # Still needed: Orbax logs every save, read and manager it creates at INFO through absl,
  # and TFDS its builds (its warnings too: `_LibraryChatter`). Orbax's read-only opens no
  # longer warn (`checkpointing.Checkpointer`), so serving keeps WARNING as training does.
  logging.set_verbosity(logging.WARNING)
  absl_logger = logging.get_absl_logger()
  if not any(isinstance(f, _LibraryChatter) for f in absl_logger.filters):
    absl_logger.addFilter(_LibraryChatter())
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    tfds.disable_progress_bar()  # Its bars name temporary build folders.
  except ImportError:
    pass
  warnings.showwarning = functools.partial(_show_warning, command)


def _top_level(args) -> None:
  """`dgi`, `dgi --help` and `dgi <unknown>`: usage, or one error line."""
  if args and args[0] in HELP_ARGS:
    print(USAGE + "\n\ncommands:\n" + "\n".join(
        f"  {name:<10} {COMMAND_USAGE[name][1]}" for name in COMMANDS))
    sys.exit(0)
  if not args:
    print(USAGE, file=sys.stderr)
    sys.exit(2)
  print(f"dgi: error: unknown command {args[0]!r}; {USAGE}", file=sys.stderr)
  sys.exit(1)


def main() -> None:
  """Console entry point (`dgi`)."""
  if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
    _top_level(sys.argv[1:])
  command, args = sys.argv[1], sys.argv[2:]
  if any(arg in HELP_ARGS for arg in args):
    print(_command_help(command))
    sys.exit(0)
  if command in TRAINING_COMMANDS and "jax" not in sys.modules:
    # Before JAX starts its threads; DGI_KEEP_FREED_MEMORY=0 returns freed memory to the OS.
    if os.environ.get("DGI_KEEP_FREED_MEMORY", "1") != "0":
      host_memory.keep_freed_memory_in_heap()
  show_warning = warnings.showwarning
  try:
    _start(command, args)
    app.run(lambda argv: sys.exit(_run(argv, command, args)), argv=[sys.argv[0], *args],
            flags_parser=functools.partial(_parse_flags, command))
  finally:
    warnings.showwarning = show_warning


if __name__ == "__main__":
  main()

"""Bad input to every `dgi` command ends in one error line, exit status 1, no change.

Each case runs `dgi` in-process on a copy of the shared tiny run and checks that stderr
holds exactly one error line, `dgi <command>: error: ...`, naming what is wrong (the flag,
the config field, the file, line and field), no traceback, and that no file under the
work directory changed (`snapshot`; a case may list the files it is allowed to touch).
"""

import contextlib
import dataclasses
import errno
import os
import pathlib
import types
from typing import Callable, Optional, Tuple

import pytest

from conftest import load_config
from dgi_jax import checkpointing, config_checks, run_lock
from dgi_jax.data import jsonl_format
from run_fixtures import error_lines, snapshot, write_dataset, write_jsonl

TINY = ("--config", "configs/tiny.py", "--config.data.tfds_dir={tfds}")
TRAIN = ("train", "--workdir", "{wd}") + TINY
TRUNCATED = '{"item_id": "it2", "text": "x"'  # A line cut short.


@dataclasses.dataclass
class Case:
  name: str
  args: Tuple[str, ...]  # {wd} {tfds} {tmp} are filled in.
  expect: Tuple[str, ...]  # Substrings of the error line.
  setup: Optional[Callable] = None  # setup(ctx) writes inputs or patches.
  may_change: Tuple[str, ...] = ()  # Files under {wd} the run may write.


def _edit_line(path, number, text):
  lines = pathlib.Path(path).read_text().splitlines()
  lines[number - 1] = text
  pathlib.Path(path).write_text("\n".join(lines) + "\n")


def _bad_data(mutate):
  """A setup that writes a good dataset to {tmp}/data, then `mutate(directory)`s it."""
  def setup(ctx):
    mutate(write_dataset(ctx.tmp / "data"))
  return setup


def _items_file(lines):
  def setup(ctx):
    (ctx.tmp / "new_items.jsonl").write_text("".join(line + "\n" for line in lines))
  return setup


def _read_only_workdir(ctx):
  """Files under the work directory cannot be created (as on a read-only mount; root
  ignores permission bits, so the refusal is simulated at os.open)."""
  real_open, root = os.open, str(ctx.wd)

  def refusing_open(path, flags, *args, **kwargs):
    if str(path).startswith(root) and flags & os.O_CREAT:
      raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
    return real_open(path, flags, *args, **kwargs)
  ctx.monkeypatch.setattr(os, "open", refusing_open)


def _full_disk(ctx):
  ctx.monkeypatch.setattr(checkpointing, "_free_bytes", lambda directory: 4096)


def _locked(ctx):
  ctx.stack.enter_context(run_lock.hold(ctx.wd))  # Another run trains there.


NAN = ("--config.optim.backbone_lr=1e30", "--config.optim.quantizer_lr=1e30",
       "--config.optim.grad_clip_norm=1e30", "--config.optim.warmup_steps=0",
       "--config.train.num_steps=40", "--config.train.checkpoint_every=1000")

CASES = [
    # --- train: flags and the config file.
    Case("unknown_field", TRAIN + ("--config.model.nope=1",),
         ("--config.model.nope", "no such field", "model.d_model")),
    Case("mistyped_section", TRAIN + ("--config.modle.d_model=64",),
         ("--config.modle.d_model", "--config.model.d_model")),
    Case("mistyped_field_default_config", ("train", "--workdir", "{wd}",
                                           "--config.train.num_stepz=5"),
         ("--config.train.num_stepz", "--config.train.num_steps")),
    Case("field_value_not_a_number", TRAIN + ("--config.train.num_steps=abc",),
         ("--config.train.num_steps", "abc")),
    Case("missing_config_file", ("train", "--workdir", "{wd}", "--config",
                                 "configs/nope.py"), ("--config configs/nope.py",)),
    Case("no_workdir", ("train",) + TINY, ("needs --workdir",)),
    Case("positional_argument", TRAIN + ("extra",), ("unexpected arguments: extra",)),
    Case("flag_of_another_command", TRAIN + ("--k", "3"), ("--k is not a flag",)),
    Case("unknown_flag", TRAIN + ("--nope",), ("nope",)),
    # --- train: values no run can use.
    Case("zero_steps", TRAIN + ("--config.train.num_steps=0",), ("train.num_steps=0",)),
    Case("negative_steps", TRAIN + ("--config.train.num_steps=-5",),
         ("train.num_steps=-5",)),
    Case("zero_batch", TRAIN + ("--config.train.global_batch_size=0",),
         ("train.global_batch_size=0",)),
    Case("negative_batch", TRAIN + ("--config.train.global_batch_size=-16",),
         ("train.global_batch_size=-16",)),
    Case("batch_vs_devices", TRAIN + ("--config.train.global_batch_size=12",),
         ("train.global_batch_size=12", "8 devices")),
    Case("zero_log_every", TRAIN + ("--config.train.log_every=0",),
         ("train.log_every=0",)),
    Case("zero_checkpoint_every", TRAIN + ("--config.train.checkpoint_every=0",),
         ("train.checkpoint_every=0",)),
    Case("zero_eval_k", TRAIN + ("--config.eval.k=0",), ("eval.k=0",)),
    Case("zero_vocab", TRAIN + ("--config.data.vocab_size=0",), ("data.vocab_size=0",)),
    Case("unknown_parallelism", TRAIN + ("--config.train.parallelism=foo",),
         ("train.parallelism='foo'",)),
    Case("missing_dataset", TRAIN + ("--config.data.dataset=/no/such/dir",),
         ("data.dataset='/no/such/dir'", "no such directory")),
    Case("codebook_larger_than_catalogue", ("train", "--workdir", "{tmp}/new") + TINY + (
        "--config.model.codebook_sizes=(512, 8, 8)",),
         ("model.codebook_sizes=(512, 8, 8)", "300 items")),
    # --- train: the work directory.
    Case("changed_model_shape", TRAIN + ("--config.model.d_model=64",),
         ("model.d_model (checkpoint 32, now 64)",)),
    Case("steps_below_checkpoint", TRAIN + ("--config.train.num_steps=10",),
         ("train.num_steps=10", "step 20")),
    Case("workdir_in_use", TRAIN, ("in use by another `dgi train`",), setup=_locked),
    Case("read_only_workdir", TRAIN, ("cannot write to {wd}", "read-only"),
         setup=_read_only_workdir),
    Case("full_disk", ("train", "--workdir", "{wd}", "--config.train.num_steps=21"),
         ("no room for a checkpoint", "MiB free", "resume from step 20"), setup=_full_disk),
    Case("non_finite_loss", ("train", "--workdir", "{tmp}/new") + TINY + NAN,
         ("non-finite loss at step", "no checkpoint was saved yet")),
    # --- train: dataset files (file, line, field).
    Case("malformed_json_line", TRAIN + ("--config.data.dataset={tmp}/data",),
         ("items.jsonl:3", "malformed JSON", f"column {len(TRUNCATED) + 1}"),
         setup=_bad_data(lambda d: _edit_line(d / "items.jsonl", 3, TRUNCATED))),
    Case("missing_field", TRAIN + ("--config.data.dataset={tmp}/data",),
         ("items.jsonl:2", "field 'text'", "missing field"),
         setup=_bad_data(lambda d: _edit_line(d / "items.jsonl", 2, '{"item_id": "it1"}'))),
    Case("wrong_field_type", TRAIN + ("--config.data.dataset={tmp}/data",),
         ("train.jsonl:4", "field 'item_id'", "expected a string"),
         setup=_bad_data(lambda d: _edit_line(
             d / "train.jsonl", 4, '{"query": "q", "history": [], "item_id": 7}'))),
    Case("unknown_history_item", TRAIN + ("--config.data.dataset={tmp}/data",),
         ("train.jsonl:2", "field 'history'", "'nope'"),
         setup=_bad_data(lambda d: _edit_line(
             d / "train.jsonl", 2, '{"query": "q", "history": ["nope"], "item_id": "it1"}'))),
    Case("duplicate_item", TRAIN + ("--config.data.dataset={tmp}/data",),
         ("items.jsonl:5", "duplicate item id 'it0'"),
         setup=_bad_data(lambda d: _edit_line(d / "items.jsonl", 5,
                                              '{"item_id": "it0", "text": "again"}'))),
    Case("not_utf8", TRAIN + ("--config.data.dataset={tmp}/data",),
         ("valid.jsonl:1", "not UTF-8"),
         setup=_bad_data(lambda d: (d / "valid.jsonl").write_bytes(b'{"query": "\xff"}\n'))),
    Case("empty_split", TRAIN + ("--config.data.dataset={tmp}/data",),
         ("valid.jsonl", "no records"),
         setup=_bad_data(lambda d: (d / "valid.jsonl").write_text(""))),
    Case("missing_split_file", TRAIN + ("--config.data.dataset={tmp}/data",),
         ("test.jsonl", "missing file"),
         setup=_bad_data(lambda d: (d / "test.jsonl").unlink())),
    # --- eval.
    Case("eval_missing_workdir", ("eval", "--workdir", "/no/such/run"), ("does not exist",)),
    Case("eval_empty_workdir", ("eval", "--workdir", "{tmp}/empty"),
         ("holds no checkpoints",), setup=lambda ctx: (ctx.tmp / "empty").mkdir()),
    Case("eval_no_workdir", ("eval",), ("needs --workdir",)),
    Case("eval_zero_k", ("eval", "--workdir", "{wd}", "--k", "0"), ("--k=0",)),
    Case("eval_negative_k", ("eval", "--workdir", "{wd}", "--k", "-1"), ("--k=-1",)),
    Case("eval_zero_beam", ("eval", "--workdir", "{wd}", "--beam", "0"), ("--beam=0",)),
    Case("eval_negative_beam", ("eval", "--workdir", "{wd}", "--beam", "-2"),
         ("--beam=-2",)),
    Case("eval_beam_not_a_number", ("eval", "--workdir", "{wd}", "--beam", "abc"),
         ("--beam",)),
    Case("eval_negative_candidate_level",
         ("eval", "--workdir", "{wd}", "--candidate_level", "-1"), ("--candidate_level",)),
    Case("eval_candidate_level_past_the_sid",
         ("eval", "--workdir", "{wd}", "--candidate_level", "4"),
         ("--candidate_level=4", "3 codes")),
    Case("candidate_level_past_the_sid", TRAIN + ("--config.eval.candidate_level=4",),
         ("eval.candidate_level=4",)),
    Case("negative_sid_rerank_depth", TRAIN + ("--config.eval.sid_rerank_depth=-5",),
         ("eval.sid_rerank_depth=-5",)),
    Case("negative_popularity_weight", TRAIN + ("--config.eval.popularity_weight=-0.1",),
         ("eval.popularity_weight=-0.1", ">= 0")),
    Case("eval_negative_popularity_weight",
         ("eval", "--workdir", "{wd}", "--popularity_weight", "-1"), ("--popularity_weight",)),
    Case("eval_negative_sid_rerank_depth",
         ("eval", "--workdir", "{wd}", "--sid_rerank_depth", "-1"), ("--sid_rerank_depth",)),
    Case("eval_unknown_split", ("eval", "--workdir", "{wd}", "--split", "nope"),
         ("--split",)),
    Case("eval_with_config", ("eval", "--workdir", "{wd}", "--config", "configs/tiny.py"),
         ("drop --config",)),
    Case("eval_with_config_override", ("eval", "--workdir", "{wd}",
                                       "--config.model.d_model=64"), ("drop --config",)),
    Case("eval_positional_argument", ("eval", "--workdir", "{wd}", "extra"),
         ("unexpected arguments: extra",)),
    Case("eval_flag_of_search", ("eval", "--workdir", "{wd}", "--history", "it1"),
         ("--history is not a flag of dgi eval",)),
    Case("eval_read_only_workdir", ("eval", "--workdir", "{wd}"),
         ("cannot write to {wd}", "read-only"), setup=_read_only_workdir),
    # --- search.
    Case("search_nothing_to_search", ("search", "--workdir", "{wd}"),
         ("needs a query text",)),
    Case("search_zero_k", ("search", "--workdir", "{wd}", "--k", "0", "cream"), ("--k=0",)),
    Case("search_negative_k", ("search", "--workdir", "{wd}", "--k", "-1", "cream"),
         ("--k=-1",)),
    Case("search_zero_beam", ("search", "--workdir", "{wd}", "--beam", "0", "cream"),
         ("--beam=0",)),
    Case("search_negative_beam", ("search", "--workdir", "{wd}", "--beam", "-2", "cream"),
         ("--beam=-2",)),
    Case("search_unknown_history", ("search", "--workdir", "{wd}", "--history", "no-such",
                                    "cream"), ("unknown item id 'no-such'",)),
    Case("search_missing_workdir", ("search", "--workdir", "/no/such/run", "cream"),
         ("does not exist",)),
    # --- index.
    Case("index_no_out", ("index", "--workdir", "{wd}"), ("needs --out",)),
    Case("index_missing_items_file", ("index", "--workdir", "{wd}", "--out", "{tmp}/s.jsonl",
                                      "--add", "{tmp}/none.jsonl"),
         ("none.jsonl", "missing file")),
    Case("index_malformed_items", ("index", "--workdir", "{wd}", "--out", "{tmp}/s.jsonl",
                                   "--add", "{tmp}/new_items.jsonl"),
         ("new_items.jsonl:2", "malformed JSON"),
         setup=_items_file(['{"item_id": "n1", "text": "a"}', TRUNCATED])),
    Case("index_item_without_text", ("index", "--workdir", "{wd}", "--out", "{tmp}/s.jsonl",
                                     "--add", "{tmp}/new_items.jsonl"),
         ("new_items.jsonl:1", "field 'text'"), setup=_items_file(['{"item_id": "n1"}'])),
    Case("index_existing_item", ("index", "--workdir", "{wd}", "--out", "{tmp}/s.jsonl",
                                 "--add", "{tmp}/new_items.jsonl"),
         ("'item-00000'", "already indexed"),
         setup=_items_file(['{"item_id": "item-00000", "text": "a lamp"}'])),
    Case("index_out_is_a_directory", ("index", "--workdir", "{wd}", "--out", "{tmp}"),
         ("--out {tmp}", "is a directory")),
    Case("index_flag_of_eval", ("index", "--workdir", "{wd}", "--out", "{tmp}/s.jsonl",
                                "--k", "3"), ("--k is not a flag of dgi index",)),
    # --- parity, benchmark, no command.
    Case("parity_unknown_field", ("parity", "--config", "configs/tiny.py",
                                  "--config.model.nope=1"), ("--config.model.nope",)),
    Case("parity_missing_torch_checkpoint", ("parity", "--config", "configs/tiny.py",
                                             "--torch_checkpoint", "/no/such.pt"),
         ("--torch_checkpoint /no/such.pt", "no such file")),
    Case("parity_flag_of_train", ("parity", "--workdir", "{wd}"),
         ("--workdir is not a flag of dgi parity",)),
    Case("benchmark_no_dataset", ("benchmark", "--workdir", "{tmp}/b"),
         ("needs --dataset",)),
    Case("benchmark_missing_dataset", ("benchmark", "--dataset", "/no/such/dir",
                                       "--methods", "bm25", "--workdir", "{tmp}/b"),
         ("/no/such/dir",)),
    Case("benchmark_unknown_method", ("benchmark", "--dataset", "beauty", "--methods",
                                      "bm26", "--workdir", "{tmp}/b"), ("unknown method",)),
    # Without --config a benchmark's overrides apply to its dataset's benchmark config:
    # an unknown field is named against that file, a benchmark-only field is applied
    # (and its bad value reaches the runner's check).
    Case("benchmark_unknown_field", ("benchmark", "--dataset", "scifact",
                                     "--config.benchmark.nope=1", "--workdir", "{tmp}/b"),
         ("--config.benchmark.nope", "benchmark_scifact.py has no such field")),
    Case("benchmark_override_without_config", ("benchmark", "--dataset", "beauty",
                                               "--config.benchmark.num_seeds=0",
                                               "--workdir", "{tmp}/b"),
         ("num_seeds=0: give 1 or more",)),
]


def test_there_are_at_least_40_cases():
  assert len(CASES) >= 40 and len({c.name for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_bad_input_ends_in_one_error_line(case, dgi, tiny_run, run_copy, tmp_path,
                                          monkeypatch):
  fill = lambda text: text.format(wd=run_copy, tfds=tiny_run.tfds_dir, tmp=tmp_path)  # noqa: E731
  with contextlib.ExitStack() as stack:
    ctx = types.SimpleNamespace(tmp=tmp_path, wd=run_copy, monkeypatch=monkeypatch,
                                stack=stack)
    if case.setup:
      case.setup(ctx)
    before = snapshot(run_copy)
    code, _, err = dgi(*map(fill, case.args))
  assert code == 1, err
  command = case.args[0]
  assert error_lines(err) == [line for line in err.splitlines()
                              if line.startswith(f"dgi {command}: error: ")], err
  (line,) = error_lines(err)
  for expected in map(fill, case.expect):
    assert expected in line, line
  after = snapshot(run_copy)
  changed = {p for p in before.keys() | after.keys() if before.get(p) != after.get(p)}
  assert changed <= set(case.may_change), changed


def test_unknown_command_is_one_line(dgi):
  code, _, err = dgi("nope")
  assert code == 1 and err.strip().splitlines() == [err.strip()]
  assert "unknown command 'nope'" in err


@pytest.mark.parametrize("command", ["train", "parity", "eval", "search", "index",
                                     "benchmark"])
def test_each_command_help_lists_its_flags(dgi, command):
  from dgi_jax import main as main_lib  # pylint: disable=g-import-not-at-top
  code, out, _ = dgi(command, "--help")
  assert code == 0
  assert out.startswith(f"usage: dgi {command}")
  for name in main_lib.COMMAND_FLAGS[command]:
    assert f"--{name}:" in out
  others = {n for flags in main_lib.COMMAND_FLAGS.values() for n in flags}
  for name in others - set(main_lib.COMMAND_FLAGS[command]):
    assert f"--{name}:" not in out


def test_truncated_json_line_reports_its_own_column(tmp_path):
  path = write_jsonl(tmp_path / "items.jsonl", [{"item_id": "a", "text": "x"}])
  with open(path, "a") as f:
    f.write(TRUNCATED + "\n")
  with pytest.raises(jsonl_format.DatasetFormatError,
                     match=rf":2: malformed JSON \(.* at column {len(TRUNCATED) + 1}\)"):
    jsonl_format.read_items(path)


def test_byte_order_mark_is_accepted(tmp_path):
  directory = write_dataset(tmp_path / "data")
  for name in ("items.jsonl", "train.jsonl"):
    path = directory / name
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
  raw = jsonl_format.read_jsonl_dataset(directory)
  assert raw.items[0].item_id == "it0" and len(raw.splits["train"]) == 96


def test_codebooks_too_small_for_distinct_sids_warn_with_the_numbers():
  config = load_config("tiny")
  with config.unlocked():
    config.model.codebook_sizes = (4, 4)
  with pytest.warns(UserWarning, match=r"\(4, 4\) give 16 distinct SIDs for 300 items: "
                    r"at least 284 items must share a SID"):
    config_checks.check_catalogue(config, num_items=300, num_train=1200)

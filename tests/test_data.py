"""Tests of the data package: format validation, synthetic catalogue, TFDS builds,
tokenizer and grain pipelines. Small sizes; the TFDS builds are shared per module."""

import collections
import json
import pathlib
import subprocess
import sys

import ml_collections
import numpy as np
import pytest

from conftest import load_config
from dgi_jax.data import dataset as dataset_lib
from dgi_jax.data import jsonl_format
from dgi_jax.data import pipeline
from dgi_jax.data import records
from dgi_jax.data import synthetic_catalogue
from dgi_jax.data import tokenizer as tokenizer_lib
from dgi_jax.data.jsonl_format import DatasetFormatError

# ----------------------------------------------------------------- helpers

_ITEMS = [records.Item(f"p{i}", text) for i, text in enumerate([
    "Red cotton T-Shirt", "Blue denim jeans", "Vitamin C face serum 30 ml",
    "Cast iron frying pan", "Lavender scented candle", "Wireless earbuds black"])]
_SPLITS = {
    "train": [records.Request("red shirt", ("p1",), ("p0",)),
              records.Request("jeans", (), ("p1",)),
              records.Request("", ("p0", "p1", "p4"), ("p2",)),
              records.Request("frying pan", ("p2",), ("p3",))],
    "validation": [records.Request("candle", ("p3",), ("p4",)),
                   records.Request("serum", (), ("p2", "p5"))],
    "test": [records.Request("earbuds", ("p0", "p4"), ("p5",)),
             records.Request("clothes", ("p2",), ("p0", "p1", "p3"))],
}


def _write_small(directory) -> pathlib.Path:
  return jsonl_format.write_jsonl_dataset(directory, _ITEMS, _SPLITS)


def _raw_records(raw: records.RawDataset, split: str):
  """Requests of a split as comparable tuples of item indices."""
  index = {item.item_id: i for i, item in enumerate(raw.items)}
  return [(r.query, [index[i] for i in r.history], [index[i] for i in r.item_ids])
          for r in raw.splits[split]]


def _source_records(ds: dataset_lib.Dataset, split: str):
  """Records of a prepared split, ordered by example_id."""
  source = ds.source(split)
  rows = sorted(source.__getitems__(range(len(source))), key=lambda r: r["example_id"])
  assert [int(r["example_id"]) for r in rows] == list(range(len(rows)))
  return [(r["query"].decode(), [int(i) for i in r["history"]],
           [int(i) for i in r["relevant"]]) for r in rows]


# ----------------------------------------------------------------- JSONL format

def _edit(directory, name, edit):
  path = directory / name
  lines = path.read_text().splitlines()
  path.write_text("\n".join(edit(lines)) + "\n")


def _set_field(line_no, field, value, drop=False):
  def edit(lines):
    obj = json.loads(lines[line_no - 1])
    if drop:
      del obj[field]
    else:
      obj[field] = value
    lines[line_no - 1] = json.dumps(obj)
    return lines
  return edit


_BAD_LINES = {
    "malformed_json": ("train.jsonl", 2, None,
                       lambda lines: lines[:1] + ['{"query": "x", '] + lines[2:]),
    "not_an_object": ("valid.jsonl", 1, None, lambda lines: ["[1, 2]"] + lines[1:]),
    "missing_text": ("items.jsonl", 2, "text", _set_field(2, "text", None, drop=True)),
    "missing_history": ("test.jsonl", 2, "history",
                        _set_field(2, "history", None, drop=True)),
    "query_not_string": ("train.jsonl", 3, "query", _set_field(3, "query", 7)),
    "history_not_list": ("train.jsonl", 1, "history", _set_field(1, "history", "p1")),
    "history_id_not_string": ("valid.jsonl", 1, "history",
                              _set_field(1, "history", [3])),
    "unknown_history_id": ("valid.jsonl", 2, "history",
                           _set_field(2, "history", ["p1", "nope"])),
    "unknown_target": ("test.jsonl", 1, "item_id", _set_field(1, "item_id", "nope")),
    "unknown_relevant": ("test.jsonl", 2, "item_ids",
                         _set_field(2, "item_ids", ["p0", "nope"])),
    "empty_relevant": ("valid.jsonl", 2, "item_ids", _set_field(2, "item_ids", [])),
    "train_with_item_ids": ("train.jsonl", 4, "item_ids",
                            _set_field(4, "item_ids", ["p3"])),
    "duplicate_item_id": ("items.jsonl", 3, "item_id", _set_field(3, "item_id", "p0")),
    "empty_item_id": ("items.jsonl", 6, "item_id", _set_field(6, "item_id", "")),
}


@pytest.mark.parametrize("case", sorted(_BAD_LINES))
def test_bad_line_names_file_line_and_field(tmp_path, case):
  name, line, field, edit = _BAD_LINES[case]
  directory = _write_small(tmp_path / "d")
  _edit(directory, name, edit)
  with pytest.raises(DatasetFormatError) as info:
    jsonl_format.read_jsonl_dataset(directory)
  err = info.value
  assert (pathlib.Path(err.path).name, err.line, err.field) == (name, line, field)
  assert f"{name}:{line}:" in str(err)
  if field:
    assert f"field '{field}'" in str(err)


@pytest.mark.parametrize("name,content", [("items.jsonl", ""), ("items.jsonl", "\n\n"),
                                          ("test.jsonl", ""), ("train.jsonl", None)])
def test_empty_or_missing_file(tmp_path, name, content):
  directory = _write_small(tmp_path / "d")
  if content is None:
    (directory / name).unlink()
  else:
    (directory / name).write_text(content)
  with pytest.raises(DatasetFormatError, match=f"{name}: (file holds no records|"
                     "missing file)"):
    jsonl_format.read_jsonl_dataset(directory)


def test_writer_round_trip_and_atomicity(tmp_path):
  directory = _write_small(tmp_path / "d")
  raw = jsonl_format.read_jsonl_dataset(directory)
  assert raw.items == _ITEMS and raw.splits == _SPLITS
  with pytest.raises(FileExistsError):
    _write_small(directory)
  bad = dict(_SPLITS, test=[records.Request("q", ("ghost",), ("p0",))])
  with pytest.raises(DatasetFormatError, match=r"test.jsonl:1: field 'history'.*ghost"):
    jsonl_format.write_jsonl_dataset(tmp_path / "e", _ITEMS, bad)
  assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]  # Nothing half-written.


# ----------------------------------------------------------------- synthetic catalogue

def _targets(raw, split):
  return [r.item_ids[0] for r in raw.splits[split]]


def test_synthetic_is_a_function_of_the_seed():
  a = synthetic_catalogue.make_synthetic_dataset(300, 400, 50, seed=1)
  b = synthetic_catalogue.make_synthetic_dataset(300, 400, 50, seed=1)
  c = synthetic_catalogue.make_synthetic_dataset(300, 400, 50, seed=2)
  d = synthetic_catalogue.make_synthetic_dataset(300, 800, 60, seed=1)
  assert a == b
  assert [i.text for i in a.items] != [i.text for i in c.items]
  assert _targets(a, "train") != _targets(c, "train")
  assert a.items == d.items  # The catalogue does not depend on the request counts.


def test_synthetic_default_size_catalogue_and_popularity():
  raw = synthetic_catalogue.make_synthetic_dataset(num_train=20000, num_eval=1000)
  assert len(raw.items) == 5000
  assert len({i.text for i in raw.items}) == 5000  # Distinct titles.
  assert len({i.text.split()[0] for i in raw.items}) >= 30  # Dozens of brands.
  counts = collections.Counter(_targets(raw, "train"))
  per_item = np.sort([counts.get(i.item_id, 0) for i in raw.items])[::-1]
  assert per_item[:500].sum() / per_item.sum() > 0.4  # Head: top 10% of the items.
  assert (per_item <= 2).mean() > 0.3  # Long tail.
  never = [i.item_id for i in raw.items if i.item_id not in counts]
  assert len(never) >= 0.1 * len(raw.items)
  for split in ("validation", "test"):
    unseen = np.mean([t not in counts for t in _targets(raw, split)])
    assert 0.1 < unseen < 0.5, (split, unseen)


def test_synthetic_requests_relate_to_their_targets():
  raw = synthetic_catalogue.make_synthetic_dataset(500, 2000, 100, seed=3)
  text = {i.item_id: set(i.text.lower().replace(",", "").split()) for i in raw.items}
  rng = np.random.default_rng(0)
  ids = [i.item_id for i in raw.items]
  query_hits = newest_hits = random_hits = 0
  for r in raw.splits["train"]:
    target = r.item_ids[0]
    assert 1 <= len(r.history) <= synthetic_catalogue.MAX_HISTORY
    assert target not in r.history and len(set(r.history)) == len(r.history)
    query_hits += bool(set(r.query.lower().split()) & text[target])
    newest_hits += len(text[r.history[-1]] & text[target])
    random_hits += len(text[ids[rng.integers(len(ids))]] & text[target])
  n = len(raw.splits["train"])
  assert query_hits / n > 0.9
  assert newest_hits > 2 * random_hits  # The newest history item is related.
  queries = [r.query for r in raw.splits["train"]]
  assert len(set(queries)) > 0.5 * n  # Noise makes most queries distinct.


# ----------------------------------------------------------------- TFDS builds

@pytest.fixture(scope="module")
def tiny_data_config():
  return load_config("tiny").data


@pytest.fixture(scope="module")
def synthetic(tiny_data_config, tmp_path_factory):
  return dataset_lib.prepare_dataset(tiny_data_config, tmp_path_factory.mktemp("tfds"))


@pytest.fixture(scope="module")
def tokenizer(synthetic, tiny_data_config, tmp_path_factory):
  return tokenizer_lib.prepare_tokenizer(synthetic, tiny_data_config,
                                         tmp_path_factory.mktemp("tok"))


def test_synthetic_build_round_trips(synthetic, tiny_data_config):
  c = tiny_data_config
  raw = synthetic_catalogue.make_synthetic_dataset(
      c.synthetic_num_items, c.synthetic_num_train, c.synthetic_num_eval, c.seed)
  assert synthetic.item_ids == [i.item_id for i in raw.items]
  assert synthetic.item_texts == [i.text for i in raw.items]
  for split in records.REQUEST_SPLITS:
    assert synthetic.num_examples(split) == len(raw.splits[split])
    assert _source_records(synthetic, split) == _raw_records(raw, split)
  index = {item_id: i for i, item_id in enumerate(synthetic.item_ids)}
  expected = np.bincount([index[t] for t in _targets(raw, "train")],
                         minlength=synthetic.num_items)
  np.testing.assert_array_equal(synthetic.train_popularity, expected)
  assert synthetic.train_popularity.dtype == np.int64
  assert synthetic.version == ("dgi_synthetic/items300_train1200_eval100_seed0/1.0.0")


def test_version_follows_parameters_and_build_false_reads_only(synthetic,
                                                               tiny_data_config,
                                                               tmp_path):
  config = load_config("tiny").data
  with config.unlocked():
    config.seed = 5
  with pytest.raises(FileNotFoundError, match="not prepared"):
    dataset_lib.prepare_dataset(config, tmp_path, build=False)
  assert list(tmp_path.iterdir()) == []
  data_dir = synthetic.builder.data_dir_root
  reread = dataset_lib.prepare_dataset(tiny_data_config, data_dir, build=False)
  assert reread.item_texts == synthetic.item_texts
  assert "seed5" in dataset_lib.builder_and_config(config)[1].name


def _jsonl_config(directory):
  config = load_config("tiny").data
  config.dataset = str(directory)
  return config


def test_jsonl_build_round_trips(tmp_path):
  directory = _write_small(tmp_path / "d")
  ds = dataset_lib.prepare_dataset(_jsonl_config(directory), tmp_path / "tfds")
  raw = jsonl_format.read_jsonl_dataset(directory)
  assert ds.item_ids == [i.item_id for i in _ITEMS]
  for split in records.REQUEST_SPLITS:
    assert _source_records(ds, split) == _raw_records(raw, split)
  assert [ds.max_relevant(s) for s in records.REQUEST_SPLITS] == [1, 2, 3]
  np.testing.assert_array_equal(ds.train_popularity, [1, 1, 1, 1, 0, 0])
  assert ds.history_texts([4, 0, -1]) == [_ITEMS[4].text, _ITEMS[0].text]
  # Edited content is a new version, not a stale reuse.
  _edit(directory, "items.jsonl", _set_field(1, "text", "Green linen shirt"))
  ds2 = dataset_lib.prepare_dataset(_jsonl_config(directory), tmp_path / "tfds")
  assert ds2.version != ds.version and ds2.item_texts[0] == "Green linen shirt"


def test_failed_build_leaves_nothing(tmp_path):
  directory = _write_small(tmp_path / "d")
  _edit(directory, "test.jsonl", _set_field(2, "item_ids", ["p0", "nope"]))
  data_dir = tmp_path / "tfds"
  with pytest.raises(DatasetFormatError, match=r"test.jsonl:2: field 'item_ids'"):
    dataset_lib.prepare_dataset(_jsonl_config(directory), data_dir)
  assert list(data_dir.iterdir()) == []


# ----------------------------------------------------------------- tokenizer

_TRAIN_IN_A_PROCESS = """
import hashlib, json
from dgi_jax.data import synthetic_catalogue, tokenizer
texts = [item.text for item in synthetic_catalogue.make_synthetic_dataset(300, 10, 10).items]
tok = tokenizer.Tokenizer.train(texts, vocab_size=600)
print(hashlib.sha256(json.dumps(tok.to_json()).encode()).hexdigest(), tok.vocab_size)
"""


def test_tokenizer_training_is_the_same_in_every_process():
  # Hugging Face's trainer alone learnt a different vocabulary in each of 4 of 4
  # processes on these texts (its hash-map order breaks ties between merges).
  runs = {subprocess.run([sys.executable, "-c", _TRAIN_IN_A_PROCESS], check=True,
                         capture_output=True, text=True).stdout for _ in range(3)}
  assert len(runs) == 1, runs
  assert runs.pop().split()[1] == "600"


def test_trained_tokenizer_has_only_its_own_special_tokens():
  tok = tokenizer_lib.Tokenizer.train(["abc abd", "bcd #"] * 5, vocab_size=40)
  # The '##x' tokens declared to fix their ids are ordinary vocabulary afterwards: text
  # that spells one is split like any other.
  added = tok._tok.get_added_tokens_decoder()  # pylint: disable=protected-access
  assert sorted(t.content for t in added.values()) == ["[PAD]", "[SEP]", "[UNK]"]
  assert "##b" in tok._tok.get_vocab()  # pylint: disable=protected-access
  assert tok.tokens("abd ##b") == ["abd", "#", "#", "b"]


def test_tokenizer_layout_and_save_load(tmp_path):
  tok = tokenizer_lib.Tokenizer.train(
      ["alpha beta gamma delta", "alpha, beta! gamma delta"] * 20, vocab_size=60)
  assert tok.ids_to_tokens([0, 1, 2]) == ["[PAD]", "[UNK]", "[SEP]"]
  assert tok.tokens("Alpha, BETA!") == ["alpha", ",", "beta", "!"]
  history = [["beta", "gamma", "delta"]]  # Oldest first.
  ids = tok.encode_requests(["alpha"], history, max_len=7, max_history=2)
  assert ids.dtype == np.int32 and ids.shape == (1, 7)
  assert tok.ids_to_tokens(ids[0]) == ["alpha", "[SEP]", "delta", "[SEP]", "gamma",
                                       "[PAD]", "[PAD]"]
  # Truncation keeps the newest; no dangling [SEP] without a title token.
  short = tok.encode_requests(["alpha"], history, max_len=4, max_history=3)
  assert tok.ids_to_tokens(short[0]) == ["alpha", "[SEP]", "delta", "[PAD]"]
  one = tok.encode_requests(["alpha"], [["beta"]], max_len=4, max_history=3)
  assert tok.ids_to_tokens(one[0]) == ["alpha", "[SEP]", "beta", "[PAD]"]
  empty = tok.encode_requests([""], history, max_len=3, max_history=3)
  assert tok.ids_to_tokens(empty[0]) == ["[SEP]", "delta", "[PAD]"]
  items = tok.encode_items(["gamma delta alpha", "beta"], max_len=2)
  assert [tok.ids_to_tokens(r) for r in items] == [["gamma", "delta"], ["beta", "[PAD]"]]
  path = tmp_path / "t" / "tok.json"
  tok.save(path)
  assert [p.name for p in path.parent.iterdir()] == ["tok.json"]  # No temp files.
  loaded = tokenizer_lib.Tokenizer.load(path)
  assert loaded.vocab_size == tok.vocab_size
  np.testing.assert_array_equal(
      loaded.encode_requests(["alpha zeta"], history, 9, 3),
      tok.encode_requests(["alpha zeta"], history, 9, 3))


def test_prepare_tokenizer_reuses_file(synthetic, tokenizer, tiny_data_config, tmp_path):
  assert tokenizer.vocab_size <= tiny_data_config.vocab_size
  assert tokenizer.tokens(synthetic.item_texts[0]).count("[UNK]") == 0
  with pytest.raises(FileNotFoundError):
    tokenizer_lib.prepare_tokenizer(synthetic, tiny_data_config, tmp_path, build=False)


# ----------------------------------------------------------------- pipelines

def test_train_batches(synthetic, tokenizer, tiny_data_config):
  c = tiny_data_config
  catalogue = pipeline.encode_catalogue(synthetic, tokenizer, c)
  width = catalogue.shape[1]
  assert catalogue.shape == (300, width) and catalogue.dtype == np.int32
  batch = next(pipeline.make_train_iterator(synthetic, tokenizer, c, 8, seed=0))
  shapes = {k: (v.shape, v.dtype) for k, v in batch.items()}
  assert shapes == {"query_tokens": ((8, c.max_query_len), np.int32),
                    "item_tokens": ((8, width), np.int32),
                    "item_index": ((8,), np.int32), "example_id": ((8,), np.int32),
                    "history": ((8, c.max_history), np.int32)}
  by_id = dict(enumerate(_source_records(synthetic, "train")))
  rows = [by_id[int(e)] for e in batch["example_id"]]
  np.testing.assert_array_equal(batch["item_index"], [r[2][0] for r in rows])
  np.testing.assert_array_equal(batch["item_tokens"], catalogue[batch["item_index"]])
  expected = tokenizer.encode_requests(
      [r[0] for r in rows], [synthetic.history_texts(r[1]) for r in rows],
      c.max_query_len, c.max_history, max_title_len=c.max_item_len)
  np.testing.assert_array_equal(batch["query_tokens"], expected)
  np.testing.assert_array_equal(
      batch["history"], pipeline.pad_rows([records.recent_history(np.asarray(r[1]),
                                                                   c.max_history)
                                           for r in rows], c.max_history))


def test_catalogue_width_is_the_longest_item_rounded_up(synthetic, tokenizer,
                                                        tiny_data_config):
  c = ml_collections.ConfigDict(tiny_data_config.to_dict())
  c.max_item_len = 64  # Longer than any item, which then ends in padding.
  full = tokenizer.encode_items(synthetic.item_texts, c.max_item_len)
  catalogue = pipeline.encode_catalogue(synthetic, tokenizer, c)
  longest = int((full != 0).sum(axis=1).max())
  assert longest < c.max_item_len - pipeline.ITEM_WIDTH_MULTIPLE, "nothing to trim"
  multiple = pipeline.ITEM_WIDTH_MULTIPLE
  assert catalogue.shape[1] == -(-longest // multiple) * multiple
  np.testing.assert_array_equal(catalogue, full[:, :catalogue.shape[1]])
  assert not full[:, catalogue.shape[1]:].any()


@pytest.mark.parametrize("rows, multiple, width", [
    ([[5, 6, 0, 0, 0, 0, 0, 0, 0, 0]], 4, 4),   # Longest item 2 -> 4.
    ([[5, 6, 7, 8, 0, 0, 0, 0, 0, 0]], 4, 4),   # Exactly a multiple.
    ([[5, 0, 0, 0, 0, 0, 0, 0, 0, 0], [5, 6, 7, 8, 9, 0, 0, 0, 0, 0]], 4, 8),
    ([[5, 6, 7, 8, 9, 1, 2, 3, 4, 0]], 4, 10),  # The rounded width capped at L.
    ([[0, 0, 0, 0, 0, 0, 0, 0, 0, 0]], 4, 4),   # All padding keeps one multiple.
])
def test_trim_padding_columns(rows, multiple, width):
  tokens = np.asarray(rows, np.int32)
  trimmed = pipeline.trim_padding_columns(tokens, multiple)
  np.testing.assert_array_equal(trimmed, tokens[:, :width])


def _epoch_ids(it, num_batches):
  return np.concatenate([next(it)["example_id"] for _ in range(num_batches)])


def test_host_shards_are_disjoint_and_cover_the_epoch(synthetic, tokenizer,
                                                      tiny_data_config):
  epochs = []
  for process_index in range(2):  # 1200 examples, 25 global batches of 2 x 24 rows.
    it = pipeline.make_train_iterator(synthetic, tokenizer, tiny_data_config, 24, seed=3,
                                      process_index=process_index, process_count=2)
    epochs.append((_epoch_ids(it, 25), _epoch_ids(it, 25)))
  for epoch in range(2):
    first, second = (e[epoch] for e in epochs)
    assert len(set(first)) == len(set(second)) == 600 and not set(first) & set(second)
    assert set(first) | set(second) == set(range(1200))
  assert not np.array_equal(epochs[0][0], epochs[0][1])  # Reshuffled each epoch.
  assert not np.array_equal(epochs[0][0], np.sort(epochs[0][0]))


def test_host_batches_make_the_same_global_batch_as_one_host(synthetic, tokenizer,
                                                             tiny_data_config):
  single = pipeline.make_train_iterator(synthetic, tokenizer, tiny_data_config, 48, seed=3)
  hosts = [pipeline.make_train_iterator(synthetic, tokenizer, tiny_data_config, 24, seed=3,
                                        process_index=p, process_count=2) for p in range(2)]
  for _ in range(30):  # Across an epoch boundary (25 steps).
    want = next(single)
    got = [next(h) for h in hosts]
    for key in want:
      np.testing.assert_array_equal(np.concatenate([g[key] for g in got]), want[key])
  # The position is the same on every host and for any host count: a checkpoint written
  # by one host layout resumes on another.
  assert hosts[0].get_state() == hosts[1].get_state() == single.get_state()


def test_train_iterator_resumes_exactly(synthetic, tokenizer, tiny_data_config):
  it = pipeline.make_train_iterator(synthetic, tokenizer, tiny_data_config, 16, seed=1)
  for _ in range(5):
    next(it)
  state = it.get_state()
  expected = [next(it) for _ in range(3)]
  resumed = pipeline.make_train_iterator(synthetic, tokenizer, tiny_data_config, 16,
                                         seed=1)
  resumed.set_state(state)
  for want in expected:
    got = next(resumed)
    for key in want:
      np.testing.assert_array_equal(got[key], want[key])
  other = pipeline.make_train_iterator(synthetic, tokenizer, tiny_data_config, 16, seed=2)
  assert not np.array_equal(next(other)["example_id"], expected[0]["example_id"])


def test_eval_batches_cover_split_once(synthetic, tokenizer, tiny_data_config):
  c = tiny_data_config
  batches = list(pipeline.iterate_eval(synthetic, tokenizer, c, "test", 32))
  assert len(batches) == 4  # 100 examples.
  last = batches[-1]
  assert last["mask"].tolist() == [True] * 4 + [False] * 28
  assert (last["example_id"][4:] == -1).all() and (last["relevant"][4:] == -1).all()
  ids = np.concatenate([b["example_id"][b["mask"]] for b in batches])
  assert sorted(ids) == list(range(100))
  by_id = dict(enumerate(_source_records(synthetic, "test")))
  for b in batches:
    assert b["relevant"].shape == (32, 1) and b["history"].shape == (32, c.max_history)
    for row in np.flatnonzero(b["mask"]):
      _, history, relevant = by_id[int(b["example_id"][row])]
      recent = history[-c.max_history:]
      assert b["history"][row].tolist() == recent + [-1] * (c.max_history - len(recent))
      assert b["relevant"][row].tolist() == relevant
  hosts = [list(pipeline.iterate_eval(synthetic, tokenizer, c, "test", 16, p, 2))
           for p in range(2)]
  assert len(hosts[0]) == len(hosts[1]) == 4  # Same step count on every host.
  per_host = [set(np.concatenate([b["example_id"][b["mask"]] for b in h])) for h in hosts]
  assert not per_host[0] & per_host[1] and per_host[0] | per_host[1] == set(range(100))


def test_eval_pads_multiple_relevant_items(tmp_path):
  directory = _write_small(tmp_path / "d")
  config = _jsonl_config(directory)
  ds = dataset_lib.prepare_dataset(config, tmp_path / "tfds")
  tok = tokenizer_lib.Tokenizer.train(ds.item_texts, vocab_size=100)
  (batch,) = pipeline.iterate_eval(ds, tok, config, "test", 4)
  rows = {int(e): batch["relevant"][i].tolist()
          for i, e in enumerate(batch["example_id"]) if batch["mask"][i]}
  assert rows == {0: [5, -1, -1], 1: [0, 1, 3]}
  assert batch["mask"].tolist() == [True, True, False, False]


def test_worker_processes_keep_the_order(synthetic, tokenizer, tiny_data_config):
  config = load_config("tiny").data
  config.worker_count = 2
  inline = pipeline.make_train_iterator(synthetic, tokenizer, tiny_data_config, 16, 4)
  workers = pipeline.make_train_iterator(synthetic, tokenizer, config, 16, 4)
  try:
    for _ in range(4):
      np.testing.assert_array_equal(next(workers)["query_tokens"],
                                    next(inline)["query_tokens"])
  finally:
    workers.close()

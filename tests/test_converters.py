"""Tests of the dataset converters (Amazon Beauty, SciFact) into the generic JSONL format.

Tiny hand-written raw files with exactly known splits; bad input that must name the file,
line and field; the numpy-style abstract parser on tricky strings; and, when
../shared/data is present, the published counts of the real datasets.
"""

import csv
import json
import pathlib

import numpy as np
import pytest

from conftest import SHARED_DATA
from dgi_jax.data import jsonl_format
from dgi_jax.data.converters import CONVERTERS, DEFAULT_SOURCES, amazon_beauty, scifact
from dgi_jax.data.jsonl_format import DatasetFormatError


def _read(out: pathlib.Path, name: str):
  with open(out / name, encoding="utf-8") as f:
    return [json.loads(line) for line in f]


def _req(history, target, query=""):
  return {"query": query, "history": list(history), "item_id": target}


def _files(out: pathlib.Path):
  return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


def test_registry():
  assert CONVERTERS == {"beauty": amazon_beauty.convert, "scifact": scifact.convert}
  assert DEFAULT_SOURCES == {"beauty": "amazon_beauty", "scifact": "scifact"}


# ----------------------------------------------------------------- Amazon Beauty

_BEAUTY_ITEMS = (
    "item_id\ttitle\tcategories\n"
    "0\tGlow in the Dark Neon Nail Polish (6 Pack)\tBeauty > Makeup > Nails > Nail Polish\n"
    "1\tRose Eau de Toilette\tBeauty > Fragrance > Women's > Eau de Toilette|"
    "Beauty > Fragrance > Women's|Beauty > Gifts > Eau de Toilette\n"
    "2\tBlack Mascara\tBeauty > Makeup > Eyes > Mascara\n"
    "3\tHair Dryer\tBeauty > Hair Care > Styling Tools|Beauty > Tools > Hair Dryers\n"
    "4\tLip Balm\tBeauty > Skin Care > Lips\n"
    "10\tUnrated Soap\t\n")
# Users: 1 has five items, 2 has three (the minimum), 3 has four.
_BEAUTY_SEQUENCES = "1 3 0 4 2 1\n2 2 10 0\n3 4 3 2 0\n"


def _beauty_source(tmp_path, items=_BEAUTY_ITEMS, sequences=_BEAUTY_SEQUENCES):
  source = tmp_path / "raw_beauty"
  source.mkdir(exist_ok=True)
  (source / "items.tsv").write_text(items, encoding="utf-8")
  (source / "sequential_data.txt").write_text(sequences, encoding="utf-8")
  return source


def test_beauty_exact_splits(tmp_path):
  out = amazon_beauty.convert(_beauty_source(tmp_path), tmp_path / "beauty", max_history=2)
  assert out == tmp_path / "beauty"
  assert _read(out, "items.jsonl") == [
      {"item_id": "0", "text": "Glow in the Dark Neon Nail Polish (6 Pack) | Nail Polish"},
      {"item_id": "1", "text": "Rose Eau de Toilette | Eau de Toilette | Women's"},
      {"item_id": "2", "text": "Black Mascara | Mascara"},
      {"item_id": "3", "text": "Hair Dryer | Styling Tools | Hair Dryers"},
      {"item_id": "4", "text": "Lip Balm | Lips"},
      {"item_id": "10", "text": "Unrated Soap"},
  ]
  # Training targets: positions 1 .. n-3 (position 0 has an empty history); at most
  # max_history=2 items of history, oldest first.
  assert _read(out, "train.jsonl") == [
      _req(["3"], "0"), _req(["3", "0"], "4"),   # user 1
      # user 2 (three items) has no training target
      _req(["4"], "3"),                            # user 3
  ]
  assert _read(out, "valid.jsonl") == [
      _req(["0", "4"], "2"), _req(["2"], "10"), _req(["4", "3"], "2")]
  assert _read(out, "test.jsonl") == [
      _req(["4", "2"], "1"), _req(["2", "10"], "0"), _req(["3", "2"], "0")]
  # The reader of the generic format accepts the result.
  raw = jsonl_format.read_jsonl_dataset(out)
  assert [len(raw.splits[s]) for s in ("train", "validation", "test")] == [3, 3, 3]


def test_beauty_default_history_and_options(tmp_path):
  source = _beauty_source(tmp_path)
  out = amazon_beauty.convert(source, tmp_path / "a", with_categories=False)
  assert [o["text"] for o in _read(out, "items.jsonl")] == [
      "Glow in the Dark Neon Nail Polish (6 Pack)", "Rose Eau de Toilette",
      "Black Mascara", "Hair Dryer", "Lip Balm", "Unrated Soap"]
  assert _read(out, "test.jsonl")[0] == _req(["3", "0", "4", "2"], "1")
  # max_valid_users=2 of 3 users: every 2nd user (users 1 and 3); test keeps everyone.
  out = amazon_beauty.convert(source, tmp_path / "b", max_valid_users=2)
  assert _read(out, "valid.jsonl") == [_req(["3", "0", "4"], "2"),
                                       _req(["4", "3"], "2")]
  assert len(_read(out, "test.jsonl")) == 3
  out = amazon_beauty.convert(source, tmp_path / "c", max_valid_users=1)
  assert _read(out, "valid.jsonl") == [_req(["3", "0", "4"], "2")]


def test_beauty_deterministic_and_no_overwrite(tmp_path):
  source = _beauty_source(tmp_path)
  a = amazon_beauty.convert(source, tmp_path / "a")
  b = amazon_beauty.convert(source, tmp_path / "b")
  assert _files(a) == _files(b)
  with pytest.raises(FileExistsError):
    amazon_beauty.convert(source, a)
  amazon_beauty.convert(source, a, max_history=1, overwrite=True)
  assert _read(a, "test.jsonl")[0] == _req(["2"], "1")


@pytest.mark.parametrize("items, sequences, file, line, field, message", [
    # A non-integer item id on line 7 of sequential_data.txt.
    (_BEAUTY_ITEMS, "1 3 0 4\n2 2 10 0\n\n3 4 3 2\n5 0 1 2\n6 1 2 3\n7 1 x2 3\n",
     "sequential_data.txt", 7, "item_id", "x2"),
    (_BEAUTY_ITEMS, "1 3 0 4\n2 2 10 99\n", "sequential_data.txt", 2, "item_id", "99"),
    (_BEAUTY_ITEMS, "1 3 0 4\n2 2 0\n", "sequential_data.txt", 2, "item_id", "2 items"),
    (_BEAUTY_ITEMS, "1 3 0 4\nu2 2 10 0\n", "sequential_data.txt", 2, "user_id", "u2"),
    (_BEAUTY_ITEMS, "1 3 0 4\n1 2 10 0\n", "sequential_data.txt", 2, "user_id",
     "duplicate"),
    (_BEAUTY_ITEMS.replace("2\tBlack", "2b\tBlack"), _BEAUTY_SEQUENCES, "items.tsv", 4,
     "item_id", "2b"),
    (_BEAUTY_ITEMS.replace("4\tLip Balm", "4\t "), _BEAUTY_SEQUENCES, "items.tsv", 6,
     "title", "empty"),
    (_BEAUTY_ITEMS.replace("3\tHair", "1\tHair"), _BEAUTY_SEQUENCES, "items.tsv", 5,
     "item_id", "duplicate"),
    (_BEAUTY_ITEMS.replace("4\tLip Balm\t", "4 Lip Balm "), _BEAUTY_SEQUENCES,
     "items.tsv", 6, None, "(?i)tab"),
], ids=["item-not-integer-line-7", "unknown-item", "too-few-items", "user-not-integer",
        "duplicate-user", "tsv-item-not-integer", "tsv-empty-title", "tsv-duplicate-item",
        "tsv-no-tabs"])
def test_beauty_bad_input(tmp_path, items, sequences, file, line, field, message):
  source = _beauty_source(tmp_path, items, sequences)
  out = tmp_path / "out"
  with pytest.raises(DatasetFormatError, match=message) as info:
    amazon_beauty.convert(source, out)
  assert (pathlib.Path(info.value.path).name, info.value.line, info.value.field) == (
      file, line, field)
  assert info.value.path == str(source / file)
  # Nothing half-written: no destination, no temporary folder left behind.
  assert sorted(p.name for p in tmp_path.iterdir()) == ["raw_beauty"]


def test_beauty_missing_file(tmp_path):
  source = _beauty_source(tmp_path)
  (source / "sequential_data.txt").unlink()
  with pytest.raises(DatasetFormatError, match="missing") as info:
    amazon_beauty.convert(source, tmp_path / "out")
  assert info.value.path == str(source / "sequential_data.txt")


# ----------------------------------------------------------------- SciFact parsers

@pytest.mark.parametrize("text, expected", [
    ("['First.' 'Second.']", ["First.", "Second."]),
    # Adjacent literals: a whole-string literal_eval would return one concatenated string.
    ("['a''b']", ["a", "b"]),
    # An apostrophe makes numpy quote with double quotes; both quote kinds need escapes.
    ("[\"It's fine.\" 'He said \"no\".' 'Both \\'x\\' and \"y\".']",
     ["It's fine.", 'He said "no".', "Both 'x' and \"y\"."]),
    # Brackets and commas inside a sentence, line breaks between elements.
    ("['See [12], (ref) ]' \n 'x] [y'\n 'CD4+ T cells (n = 7) ... p < 0.05']",
     ["See [12], (ref) ]", "x] [y", "CD4+ T cells (n = 7) ... p < 0.05"]),
    ("['back\\\\slash \\u00e9t\u00e9']", ["back\\slash \u00e9t\u00e9"]),
    ("[]", []),
    ("  ['padded']  ", ["padded"]),
])
def test_parse_string_list(text, expected):
  assert scifact.parse_string_list(text) == expected


def test_parse_string_list_round_trips_numpy_repr():
  sentences = ["It's a 'quoted' word.", 'He said "hi" [sic].', "A\\B path; 50% of x."
               ] + [f"Sentence {i} is long enough to wrap the numpy line." for i in range(6)]
  text = str(np.array(sentences))
  assert "\n" in text  # numpy wraps long arrays over several lines.
  assert scifact.parse_string_list(text) == sentences


@pytest.mark.parametrize("text", [
    "'a' 'b'",           # Not a list.
    "['a' 'b'",          # Unclosed list.
    "['a' 'b] ",         # Unterminated string.
    "['a' 3]",           # Not a string.
    "['a' ...]",         # numpy's summarised repr.
    "['a' + 'b']",       # An expression.
    "[b'a']",            # Bytes, not text.
    "['a'] ['b']",       # Two lists.
    "[['a']]",           # Nested.
])
def test_parse_string_list_rejects(text):
  with pytest.raises(ValueError):
    scifact.parse_string_list(text)


@pytest.mark.parametrize("text, expected", [
    ("[123 456]", ["123", "456"]), ("[7]", ["7"]), ("[]", []), ("[1, 2]", ["1", "2"]),
    (" [ 9  10 ] ", ["9", "10"])])
def test_parse_id_list(text, expected):
  assert scifact.parse_id_list(text) == expected


@pytest.mark.parametrize("text", ["123", "[12 x]", "[1.5]", "[-3]"])
def test_parse_id_list_rejects(text):
  with pytest.raises(ValueError):
    scifact.parse_id_list(text)


# ----------------------------------------------------------------- SciFact conversion

_CORPUS = (
    "doc_id,title,abstract,structured\n"
    "30,Apoptosis in cells.,\"['Cells die.' \"\"It's programmed [1].\"\"\n"
    " 'A third, with a comma.']\",False\n"
    "10,Vitamin D trial,['Vitamin D helps.'],True\n"
    "20,Sleep and memory.,\"['Sleep consolidates memory.' 'Naps help.']\",False\n"
    "40,Title only,[],False\n")
_CLAIMS_HEADER = "id,claim,evidence_doc_id,evidence_label,evidence_sentences,cited_doc_ids\n"
# Claim 10 has two rows (two evidence sets) and is the held-out validation claim
# (id % 10 == 0); claim 7 cites nothing and is skipped.
_CLAIMS_TRAIN = (_CLAIMS_HEADER +
                 "3,Cells never die.,30,CONTRADICT,[0],[30]\n"
                 "10,\"Sleep, not vitamins, helps memory.\",20,SUPPORT,[0],[20 10]\n"
                 "10,\"Sleep, not vitamins, helps memory.\",20,SUPPORT,[1],[20 10]\n"
                 "7,Unrelated claim.,,,[],[]\n"
                 "5,Vitamin D and sleep.,,,[],[10 20]\n")
_CLAIMS_VALIDATION = (_CLAIMS_HEADER +
                      "2,Naps help memory.,20,SUPPORT,[1],[20]\n"
                      "1,Vitamin D helps cells.,,,[],[10 30]\n")


def _scifact_source(tmp_path, corpus=_CORPUS, train=_CLAIMS_TRAIN,
                    validation=_CLAIMS_VALIDATION):
  source = tmp_path / "raw_scifact"
  source.mkdir(exist_ok=True)
  for name, text in (("corpus_train.csv", corpus), ("claims_train.csv", train),
                     ("claims_validation.csv", validation)):
    (source / name).write_text(text, encoding="utf-8")
  # Unlabelled: must be ignored, even when it would not parse.
  (source / "claims_test.csv").write_text("garbage", encoding="utf-8")
  return source


def test_scifact_exact_splits(tmp_path):
  out = scifact.convert(_scifact_source(tmp_path), tmp_path / "scifact")
  assert _read(out, "items.jsonl") == [
      {"item_id": "30", "text": "Apoptosis in cells. Cells die. It's programmed [1]. "
                                "A third, with a comma."},
      {"item_id": "10", "text": "Vitamin D trial Vitamin D helps."},
      {"item_id": "20", "text": "Sleep and memory. Sleep consolidates memory. Naps help."},
      {"item_id": "40", "text": "Title only"},
  ]
  q = lambda text, target: {"query": text, "history": [], "item_id": target}
  assert _read(out, "train.jsonl") == [
      q("Cells never die.", "30"), q("Vitamin D and sleep.", "10"),
      q("Vitamin D and sleep.", "20")]
  assert _read(out, "valid.jsonl") == [
      {"query": "Sleep, not vitamins, helps memory.", "history": [], "item_ids": ["20", "10"]}]
  # Single relevant documents are written as "item_id" by the generic writer.
  assert _read(out, "test.jsonl") == [
      q("Naps help memory.", "20"),
      {"query": "Vitamin D helps cells.", "history": [], "item_ids": ["10", "30"]}]


def test_scifact_pseudo_queries(tmp_path):
  source = _scifact_source(tmp_path)
  plain = _read(scifact.convert(source, tmp_path / "plain"), "train.jsonl")
  out = scifact.convert(source, tmp_path / "a", pseudo_queries_per_doc=2)
  train = _read(out, "train.jsonl")
  assert train[:len(plain)] == plain
  pseudo = train[len(plain):]
  sentences = {"30": ["Cells die.", "It's programmed [1].", "A third, with a comma."],
               "10": ["Vitamin D helps."],
               "20": ["Sleep consolidates memory.", "Naps help."]}
  # min(2, number of sentences) distinct sentences of each document, in corpus order
  # (doc 40 has none).
  assert [r["item_id"] for r in pseudo] == ["30", "30", "10", "20", "20"]
  for doc in sentences:
    queries = [r["query"] for r in pseudo if r["item_id"] == doc]
    assert len(set(queries)) == len(queries)
    assert set(queries) <= set(sentences[doc])
  assert all(r["history"] == [] for r in pseudo)
  # Item texts, validation and test are unchanged; the draw is seeded.
  for name in ("items.jsonl", "valid.jsonl", "test.jsonl"):
    assert _read(out, name) == _read(tmp_path / "plain", name)
  again = scifact.convert(source, tmp_path / "b", pseudo_queries_per_doc=2)
  assert _files(again) == _files(out)


@pytest.mark.parametrize("file, edit, line, field, message", [
    ("corpus_train.csv", lambda t: t.replace("['Vitamin D helps.']", "['Vitamin D helps.]"),
     4, "abstract", "unexpected"),
    ("corpus_train.csv", lambda t: t.replace("['Vitamin D helps.']", "Vitamin D helps."),
     4, "abstract", "bracketed"),
    # The first line of a row that spans several lines.
    ("corpus_train.csv", lambda t: t.replace("'Cells die.'", "'Cells die.' 42"),
     2, "abstract", "42"),
    ("corpus_train.csv", lambda t: t.replace("\n20,Sleep", "\n2x,Sleep"), 5, "doc_id", "2x"),
    ("corpus_train.csv", lambda t: t.replace("\n20,Sleep", "\n10,Sleep"), 5, "doc_id",
     "duplicate"),
    ("corpus_train.csv", lambda t: t.replace("doc_id,title", "id,title"), 1, None, "doc_id"),
    ("claims_train.csv", lambda t: t.replace("[10 20]", "[10 2O]"), 6, "cited_doc_ids", "2O"),
    ("claims_train.csv", lambda t: t.replace("[10 20]", "[10 99]"), 6, "cited_doc_ids", "99"),
    ("claims_train.csv", lambda t: t.replace("5,Vitamin", "five,Vitamin"), 6, "id", "five"),
    ("claims_train.csv", lambda t: t.replace("7,Unrelated claim.", "7, "), 5, "claim",
     "empty"),
    ("claims_validation.csv", lambda t: t.replace("[20]\n", "[20\n"), 2, "cited_doc_ids",
     "bracketed"),
], ids=["abstract-unterminated", "abstract-not-list", "abstract-number-multiline-row",
        "doc-id", "duplicate-doc", "header", "cited-not-integer", "cited-unknown",
        "claim-id", "empty-claim", "cited-unclosed"])
def test_scifact_bad_input(tmp_path, file, edit, line, field, message):
  texts = {"corpus_train.csv": _CORPUS, "claims_train.csv": _CLAIMS_TRAIN,
           "claims_validation.csv": _CLAIMS_VALIDATION}
  texts[file] = edit(texts[file])
  assert texts[file] != {"corpus_train.csv": _CORPUS, "claims_train.csv": _CLAIMS_TRAIN,
                         "claims_validation.csv": _CLAIMS_VALIDATION}[file]
  source = _scifact_source(tmp_path, texts["corpus_train.csv"], texts["claims_train.csv"],
                           texts["claims_validation.csv"])
  with pytest.raises(DatasetFormatError, match=message) as info:
    scifact.convert(source, tmp_path / "out")
  assert (info.value.path, info.value.line, info.value.field) == (
      str(source / file), line, field)
  assert sorted(p.name for p in tmp_path.iterdir()) == ["raw_scifact"]


# ----------------------------------------------------------------- shared data

_needs_beauty = pytest.mark.skipif(not (SHARED_DATA / "amazon_beauty").is_dir(),
                                   reason="../shared/data/amazon_beauty is absent")
_needs_scifact = pytest.mark.skipif(not (SHARED_DATA / "scifact").is_dir(),
                                    reason="../shared/data/scifact is absent")


@pytest.fixture(scope="module")
def scifact_dataset(tmp_path_factory):
  out = scifact.convert(SHARED_DATA / "scifact", tmp_path_factory.mktemp("s") / "scifact")
  return jsonl_format.read_jsonl_dataset(out)


@_needs_beauty
def test_beauty_shared_counts(tmp_path):
  out = amazon_beauty.convert(SHARED_DATA / "amazon_beauty", tmp_path / "beauty")
  raw = jsonl_format.read_jsonl_dataset(out)
  assert len(raw.items) == 12_101
  test = raw.splits["test"]
  assert len(test) == 22_363
  # Every interaction is a target exactly once across train / validation / test, except
  # each user's first (22,363 of them): 198,502 - 22,363.
  train = raw.splits["train"]
  assert len(train) + 22_363 * 2 == 198_502 - 22_363
  assert len(raw.splits["validation"]) == 22_363
  assert max(len(r.history) for r in test) == 20
  assert {len(r.item_ids) for r in test} == {1}
  assert raw.items[0].text == "Glow in the Dark Neon Nail Polish (6 Pack) | Nail Polish"
  # The file's first user: "1 10318 6381 2387 4084 1425".
  request = lambda history, target: (tuple(history), (target,))
  as_tuples = lambda requests: [(r.history, r.item_ids) for r in requests]
  assert as_tuples(train[:2]) == [request(["10318"], "6381"),
                                  request(["10318", "6381"], "2387")]
  assert as_tuples(raw.splits["validation"][:1]) == [
      request(["10318", "6381", "2387"], "4084")]
  assert as_tuples(test[:1]) == [request(["10318", "6381", "2387", "4084"], "1425")]
  assert len({i for r in train for i in r.item_ids}
             | {i for r in test for i in (*r.history, *r.item_ids)}) == 12_101


@_needs_scifact
def test_scifact_shared_counts(scifact_dataset):
  raw = scifact_dataset
  assert len(raw.items) == 5_183
  test = raw.splits["test"]
  assert len(test) == 300
  assert sum(len(r.item_ids) for r in test) == 339
  train, valid = raw.splits["train"], raw.splits["validation"]
  assert len(train) + sum(len(r.item_ids) for r in valid) == 919
  assert len(valid) == 79  # Of 809 training claims: ids divisible by 10.
  # The same splits read independently from the CSV rows (one row per evidence set).
  expected = {"train": [], "validation": [], "test": []}
  for name, splits in (("claims_train.csv", ("train", "validation")),
                       ("claims_validation.csv", ("test", "test"))):
    with open(SHARED_DATA / "scifact" / name, encoding="utf-8", newline="") as f:
      claims = {}
      for row in csv.DictReader(f):
        claims.setdefault(int(row["id"]), (row["claim"], row["cited_doc_ids"]))
    for claim_id, (claim, cited) in claims.items():
      cited = tuple(dict.fromkeys(cited.strip("[]").split()))  # One lists a doc twice.
      if claim_id % 10 == 0 or splits[0] == "test":
        expected[splits[1]].append((claim, cited))
      else:
        expected[splits[0]].extend((claim, (doc,)) for doc in cited)
  for split in expected:
    assert [(r.query, r.item_ids) for r in raw.splits[split]] == expected[split], split

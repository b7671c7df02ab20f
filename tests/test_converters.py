"""Converters of public datasets into the generic JSONL format: exact splits of hand-made
raw files, errors naming file/line/field, and the real files' counts where present."""

import json

import pytest

from dgi_jax.data import jsonl_format
from dgi_jax.data.converters import amazon_beauty, scifact
from conftest import SHARED_DATA

ITEMS_TSV = ("item_id\ttitle\tcategories\n"
             "0\tRed Nail Polish\tBeauty > Makeup > Nails > Nail Polish\n"
             "1\tRose Shampoo\tBeauty > Hair Care > Shampoos|Beauty > Bath > Shampoos\n"
             "2\tCotton Pads\t\n"
             "3\tLip Balm\tBeauty > Skin Care > Lips\n")


def _read(path):
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _beauty_source(tmp_path, sequences):
  src = tmp_path / "beauty"
  src.mkdir()
  (src / "items.tsv").write_text(ITEMS_TSV)
  (src / "sequential_data.txt").write_text(sequences)
  return src


def test_beauty_leave_one_out_exact_splits(tmp_path):
  src = _beauty_source(tmp_path, "1 0 1 2 3\n2 3 2 1\n")
  out = amazon_beauty.convert(src, tmp_path / "out", max_history=2)
  assert [i["text"] for i in _read(out / "items.jsonl")] == [
      "Red Nail Polish | Nail Polish", "Rose Shampoo | Shampoos", "Cotton Pads",
      "Lip Balm | Lips"]
  # User 1: 0 1 2 3 -> train target 1 (history 0); valid 2; test 3 (history cut to 2).
  # User 2: 3 2 1 -> no train target (position 0 has no history); valid 2; test 1.
  assert _read(out / "train.jsonl") == [{"query": "", "history": ["0"], "item_id": "1"}]
  assert _read(out / "valid.jsonl") == [
      {"query": "", "history": ["0", "1"], "item_id": "2"},
      {"query": "", "history": ["3"], "item_id": "2"}]
  assert _read(out / "test.jsonl") == [
      {"query": "", "history": ["1", "2"], "item_id": "3"},
      {"query": "", "history": ["3", "2"], "item_id": "1"}]


def test_beauty_validation_subset_keeps_every_kth_user(tmp_path):
  src = _beauty_source(tmp_path, "".join(f"{u} 0 1 2 3\n" for u in range(10)))
  out = amazon_beauty.convert(src, tmp_path / "out", max_valid_users=4)
  assert len(_read(out / "valid.jsonl")) == 4  # Users 0, 3, 6, 9 (stride 3).
  assert len(_read(out / "test.jsonl")) == 10


@pytest.mark.parametrize("sequences, line, field, message", [
    ("1 0 1 2\n2 0 x 1\n", 2, "item_id", "not an integer"),
    ("1 0 1 9\n", 1, "item_id", "item 9 is not in items.tsv"),
    ("1 0 1 2\n\n3 0 1\n", 3, "item_id", "leave-one-out needs >= 3"),
])
def test_beauty_bad_sequences_name_file_line_field(tmp_path, sequences, line, field, message):
  src = _beauty_source(tmp_path, sequences)
  with pytest.raises(jsonl_format.DatasetFormatError, match=message) as e:
    amazon_beauty.convert(src, tmp_path / "out")
  assert (e.value.path, e.value.line, e.value.field) == (
      str(src / "sequential_data.txt"), line, field)
  assert not (tmp_path / "out").exists()  # Nothing half-written.


def test_beauty_bad_item_line(tmp_path):
  src = _beauty_source(tmp_path, "1 0 1 2\n")
  (src / "items.tsv").write_text(ITEMS_TSV + "4\t\tBeauty\n")
  with pytest.raises(jsonl_format.DatasetFormatError, match=r"items.tsv:6: field 'title'"):
    amazon_beauty.convert(src, tmp_path / "out")


@pytest.mark.parametrize("text, expected", [
    ("['One.' 'Two.']", ["One.", "Two."]),
    ("[\"It's 5' long.\" 'Say \"hi\" [sic].']", ["It's 5' long.", 'Say "hi" [sic].']),
    ("['Line one.'\n 'Line, two.']", ["Line one.", "Line, two."]),
    ("[]", []),
])
def test_parse_numpy_style_string_list(text, expected):
  assert scifact.parse_string_list(text) == expected


@pytest.mark.parametrize("text", ["'One.' 'Two.'", "['a' 3]", "['unterminated]"])
def test_parse_string_list_rejects_non_lists(text):
  with pytest.raises((ValueError, SyntaxError)):
    scifact.parse_string_list(text)


def _scifact_source(tmp_path, claims_train):
  src = tmp_path / "scifact"
  src.mkdir()
  (src / "corpus_train.csv").write_text(
      "doc_id,title,abstract,structured\n"
      "11,Alpha study,\"['Alpha binds beta.'\n 'It is \"\"strong\"\".']\",False\n"
      "22,Gamma trial,\"['Gamma fails.']\",False\n"
      "33,Delta,\"[]\",False\n")
  header = "id,claim,evidence_doc_id,evidence_label,evidence_sentences,cited_doc_ids\n"
  (src / "claims_train.csv").write_text(header + claims_train)
  (src / "claims_validation.csv").write_text(
      header + "5,Gamma works.,22,CONTRADICT,[0],[22 11]\n5,Gamma works.,11,,[],[22 11]\n")
  return src


def test_scifact_exact_splits(tmp_path):
  src = _scifact_source(tmp_path, "1,Alpha binds.,11,SUPPORT,[0],[11]\n"
                                  "10,Held out.,,,[],[22]\n"
                                  "3,No citation.,,,[],[]\n"
                                  "4,Two docs.,,,[],[11 22]\n")
  out = scifact.convert(src, tmp_path / "out", pseudo_queries_per_doc=1)
  assert _read(out / "items.jsonl") == [
      {"item_id": "11", "text": 'Alpha study Alpha binds beta. It is "strong".'},
      {"item_id": "22", "text": "Gamma trial Gamma fails."},
      {"item_id": "33", "text": "Delta"}]
  train = _read(out / "train.jsonl")
  assert train[:3] == [{"query": "Alpha binds.", "history": [], "item_id": "11"},
                       {"query": "Two docs.", "history": [], "item_id": "11"},
                       {"query": "Two docs.", "history": [], "item_id": "22"}]
  # One pseudo-query per document that has a sentence (33 has none).
  assert [(r["item_id"], r["query"] in {"Alpha binds beta.", 'It is "strong".',
                                        "Gamma fails."}) for r in train[3:]] == [
      ("11", True), ("22", True)]
  assert _read(out / "valid.jsonl") == [{"query": "Held out.", "history": [],
                                         "item_id": "22"}]
  # Two rows of claim 5 merge into one request with both documents.
  assert _read(out / "test.jsonl") == [{"query": "Gamma works.", "history": [],
                                        "item_ids": ["22", "11"]}]


def test_scifact_unknown_cited_document(tmp_path):
  src = _scifact_source(tmp_path, "1,Alpha binds.,11,SUPPORT,[0],[11 99]\n")
  with pytest.raises(jsonl_format.DatasetFormatError,
                     match=r"claims_train.csv:2: field 'cited_doc_ids'.*\['99'\]"):
    scifact.convert(src, tmp_path / "out")


# ------------------------------------------------------------- the real files, if present

@pytest.mark.skipif(not (SHARED_DATA / "amazon_beauty").is_dir(), reason="no shared data")
def test_real_beauty_counts(tmp_path):
  out = amazon_beauty.convert(SHARED_DATA / "amazon_beauty", tmp_path / "out")
  raw = jsonl_format.read_jsonl_dataset(out)
  assert len(raw.items) == 12101
  assert len(raw.splits["test"]) == len(raw.splits["validation"]) == 22363
  # Interactions = per user: train targets + valid + test + the first item.
  assert len(raw.splits["train"]) + 3 * 22363 == 198502


@pytest.mark.skipif(not (SHARED_DATA / "scifact").is_dir(), reason="no shared data")
def test_real_scifact_counts(tmp_path):
  out = scifact.convert(SHARED_DATA / "scifact", tmp_path / "out")
  raw = jsonl_format.read_jsonl_dataset(out)
  assert len(raw.items) == 5183
  test = raw.splits["test"]
  assert len(test) == 300 and sum(len(r.item_ids) for r in test) == 339

"""SciFact (as used by BEIR) -> the generic JSONL format.

Raw files (see ../shared/data/scifact/PROVENANCE.md):
  corpus_train.csv              doc_id,title,abstract,structured; `abstract` is a
                                numpy-style list of sentence strings: "['A.' 'B.']"
  claims_{train,validation}.csv id,claim,...,cited_doc_ids ("[123 456]")

Splits: test = claims_validation.csv (BEIR's SciFact test set, 300 claims); valid = a
deterministic tenth of the training claims (by claim id); train = the other training
claims, one request per (claim, cited document) pair. claims_test.csv is unlabelled and
unused. Item text = title + abstract. `pseudo_queries_per_doc` adds inverse-cloze
requests (Lee et al. 2019): an abstract sentence as the query, its document as the target
— 919 labelled pairs cannot train an encoder from scratch, and this gives every document a
training signal without touching test labels.
"""

import ast
import csv
import io
import pathlib
import random
import tokenize
from typing import Dict, List, Sequence

from dgi_jax.data import jsonl_format, records

CORPUS_FILE = "corpus_train.csv"
CLAIM_FILES = {"train": "claims_train.csv", "test": "claims_validation.csv"}
VALID_EVERY = 10  # Claims whose id % 10 == 0 form the validation split.


def parse_string_list(text: str) -> List[str]:
  """The strings of a numpy-style list repr, "['a' "b's"]", without evaluating it.

  Python's tokenizer finds each string literal and `ast.literal_eval` decodes that one
  literal: evaluating the whole text would concatenate adjacent literals.
  """
  text = text.strip()
  if not (text.startswith("[") and text.endswith("]")):
    raise ValueError(f"not a bracketed list: {text[:40]!r}")
  out = []
  for token in tokenize.generate_tokens(io.StringIO(text).readline):
    if token.type == tokenize.STRING:
      out.append(ast.literal_eval(token.string))
    elif token.type == tokenize.OP and token.string in "[]":
      continue
    elif token.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.ENDMARKER):
      raise ValueError(f"unexpected {token.string!r} in a list of strings")
  return out


def parse_id_list(text: str) -> List[str]:
  """Ids of a numpy-style integer list "[123 456]" (commas allowed) -> ['123', '456']."""
  text = text.strip()
  if not (text.startswith("[") and text.endswith("]")):
    raise ValueError(f"not a bracketed list: {text[:40]!r}")
  ids = text[1:-1].replace(",", " ").split()
  for i in ids:
    if not i.isdigit():
      raise ValueError(f"not an integer id: {i!r}")
  return ids


def _rows(path: pathlib.Path, required: Sequence[str]):
  """(line number, row dict) of a CSV file whose header has `required` columns."""
  if not path.is_file():
    raise jsonl_format.DatasetFormatError(path, "missing file")
  with open(path, encoding="utf-8", newline="") as f:
    reader = csv.DictReader(f)
    missing = [c for c in required if c not in (reader.fieldnames or [])]
    if missing:
      raise jsonl_format.DatasetFormatError(path, f"header lacks {missing}", 1)
    for row in reader:
      # The reader's line_num is the last physical line of the row (quoted fields span
      # several); the row starts after the previous one ended.
      yield reader.line_num, row


def read_corpus(path: pathlib.Path) -> Dict[str, Dict[str, object]]:
  """doc_id -> {'title', 'sentences'} in file order."""
  docs: Dict[str, Dict[str, object]] = {}
  for line, row in _rows(path, ("doc_id", "title", "abstract")):
    doc_id = row["doc_id"].strip()
    if not doc_id.isdigit():
      raise jsonl_format.DatasetFormatError(path, f"not an integer: {doc_id!r}", line,
                                            "doc_id")
    try:
      sentences = [s.strip() for s in parse_string_list(row["abstract"]) if s.strip()]
    except (ValueError, SyntaxError, tokenize.TokenError) as e:
      raise jsonl_format.DatasetFormatError(path, str(e), line, "abstract") from None
    if doc_id in docs:
      raise jsonl_format.DatasetFormatError(path, f"duplicate document {doc_id}", line,
                                            "doc_id")
    docs[doc_id] = {"title": row["title"].strip(), "sentences": sentences}
  if not docs:
    raise jsonl_format.DatasetFormatError(path, "file holds no documents")
  return docs


def read_claims(path: pathlib.Path, docs) -> List[tuple]:
  """(claim id, claim text, cited doc ids) of the claims that cite at least one doc.

  The file has a row per (claim, evidence) pair; rows of one claim id are merged.
  """
  claims: Dict[int, tuple] = {}
  for line, row in _rows(path, ("id", "claim", "cited_doc_ids")):
    claim_id = row["id"].strip()
    if not claim_id.isdigit():
      raise jsonl_format.DatasetFormatError(path, f"not an integer: {claim_id!r}", line, "id")
    try:
      cited = parse_id_list(row["cited_doc_ids"])
    except ValueError as e:
      raise jsonl_format.DatasetFormatError(path, str(e), line, "cited_doc_ids") from None
    unknown = [d for d in cited if d not in docs]
    if unknown:
      raise jsonl_format.DatasetFormatError(path, f"documents {unknown} not in "
                                            f"{CORPUS_FILE}", line, "cited_doc_ids")
    if not row["claim"].strip():
      raise jsonl_format.DatasetFormatError(path, "empty", line, "claim")
    key = int(claim_id)
    if key in claims and claims[key][1] != row["claim"].strip():
      raise jsonl_format.DatasetFormatError(path, f"claim {key} has two texts", line, "claim")
    earlier = claims[key][2] if key in claims else ()
    claims[key] = (key, row["claim"].strip(), tuple(dict.fromkeys(earlier + tuple(cited))))
  return [claim for claim in claims.values() if claim[2]]


def convert(source_dir, out_dir, *, pseudo_queries_per_doc: int = 0, seed: int = 0,
            overwrite: bool = False) -> pathlib.Path:
  """Converts the raw SciFact CSVs in `source_dir` into a JSONL dataset at `out_dir`.

  Args:
    source_dir: folder with corpus_train.csv and claims_{train,validation}.csv.
    out_dir: destination (written to a temporary folder, then renamed).
    pseudo_queries_per_doc: inverse-cloze training requests per document (see the doc).
    seed: seed of the pseudo-query sentence draws.
    overwrite: replace an existing `out_dir`.
  Raises:
    DatasetFormatError: naming the file, line and field of the first bad input.
  """
  source_dir = pathlib.Path(source_dir)
  docs = read_corpus(source_dir / CORPUS_FILE)
  items = [records.Item(doc_id, " ".join([d["title"]] + d["sentences"]).strip())
           for doc_id, d in docs.items()]
  train_claims = read_claims(source_dir / CLAIM_FILES["train"], docs)
  test_claims = read_claims(source_dir / CLAIM_FILES["test"], docs)
  splits = {"train": [], "validation": [], "test": []}
  for claim_id, text, cited in train_claims:
    if claim_id % VALID_EVERY == 0:
      splits["validation"].append(records.Request(text, (), cited))
    else:
      splits["train"].extend(records.Request(text, (), (doc,)) for doc in cited)
  splits["test"] = [records.Request(text, (), cited) for _, text, cited in test_claims]
  rng = random.Random(seed)
  for doc_id, d in docs.items():
    sentences = d["sentences"]
    for sentence in rng.sample(sentences, min(pseudo_queries_per_doc, len(sentences))):
      splits["train"].append(records.Request(sentence, (), (doc_id,)))
  return jsonl_format.write_jsonl_dataset(out_dir, items, splits, overwrite=overwrite)

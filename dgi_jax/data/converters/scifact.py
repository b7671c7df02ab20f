"""SciFact (as used by BEIR) -> the generic JSONL format.

Raw files (see ../shared/data/scifact/PROVENANCE.md):
  corpus_train.csv       doc_id,title,abstract,structured; `abstract` is the str() of a
                         numpy array of sentence strings, "['A.' 'B.']" (no commas; long
                         arrays wrap over several lines), parsed without eval.
  claims_train.csv       id,claim,evidence_doc_id,evidence_label,evidence_sentences,
  claims_validation.csv  cited_doc_ids; one row per (claim, evidence) pair, cited_doc_ids
                         numpy-style "[123 456]". claims_test.csv is unlabelled: unused.

Items: one per document, in corpus order; text = title + " " + the abstract sentences
joined by spaces. Requests have empty histories:
  train       one line per (training claim, cited document) pair; claims citing nothing
              are skipped. `pseudo_queries_per_doc` > 0 appends inverse-cloze requests
              (Lee et al. 2019, ICT): per document, that many distinct sentences of its
              abstract (all of them if it has fewer), drawn by an RNG seeded with
              (`seed`, doc id); query = the sentence, target = the document, whose item
              text stays the whole document. 919 labelled pairs leave most of the 5,183
              documents without a training signal; this gives each one, from the corpus
              text only (no test label is used).
  validation  the training claims with id % 10 == 0 (79 of 809: a deterministic ~10%
              held out by claim id), with "item_ids" = all cited documents.
  test        claims_validation.csv, which is BEIR's SciFact test set (300 claims, 339
              pairs), with "item_ids" = all cited documents.
Rows of one claim id are merged (cited documents in first-seen order); a claim id with
two different texts, an unknown cited document or a malformed field raises
`DatasetFormatError` naming the file, the first line of the row and the field.
"""

import ast
import csv
import io
import pathlib
import random
import re
import tokenize
from typing import Iterator, NamedTuple, Sequence

from dgi_jax.data import jsonl_format, records

CORPUS_FILE = "corpus_train.csv"
TRAIN_CLAIMS_FILE = "claims_train.csv"
TEST_CLAIMS_FILE = "claims_validation.csv"  # BEIR's SciFact test set.
VALID_EVERY = 10  # Training claims whose id % VALID_EVERY == 0 form the validation split.
_INTEGER = re.compile(r"[0-9]+")


class Document(NamedTuple):
  doc_id: str
  title: str
  sentences: tuple[str, ...]

  @property
  def text(self) -> str:
    return " ".join(part for part in (self.title, *self.sentences) if part)


class Claim(NamedTuple):
  claim_id: int
  text: str
  cited: tuple[str, ...]


def _error(path, message, line=None, field=None) -> jsonl_format.DatasetFormatError:
  return jsonl_format.DatasetFormatError(path, message, line, field)


def parse_string_list(text: str) -> list[str]:
  """The strings of a numpy-style list "['a' \"b's\"]", without evaluating the text.

  Python's tokenizer splits the text into tokens; each STRING token is decoded alone by
  `ast.literal_eval` (a whole-text literal_eval would concatenate adjacent literals, and
  eval would run code). Only '[' string* ']' is accepted, whitespace and line breaks
  anywhere between tokens.

  Raises:
    ValueError: anything else (unterminated strings, numbers, bytes, '...', nesting).
  """
  text = text.strip()
  if not (text.startswith("[") and text.endswith("]")):
    raise ValueError(f"not a bracketed list: {text[:40]!r}")
  out = []
  depth = closed = 0
  try:
    for token in tokenize.generate_tokens(io.StringIO(text).readline):
      kind, string = token.type, token.string
      if kind in (tokenize.NL, tokenize.NEWLINE, tokenize.ENDMARKER):
        continue
      if closed:
        raise ValueError(f"unexpected {string!r} after the closing ']'")
      if kind == tokenize.OP and string == "[" and depth == 0:
        depth = 1
      elif kind == tokenize.OP and string == "]" and depth == 1:
        closed = 1
      elif kind == tokenize.STRING and depth == 1:
        value = ast.literal_eval(string)
        if not isinstance(value, str):
          raise ValueError(f"not a text string: {string[:40]!r}")
        out.append(value)
      else:
        raise ValueError(f"unexpected {string[:40]!r} in a list of strings")
  except (tokenize.TokenError, SyntaxError) as e:  # Unterminated text, bad escapes.
    raise ValueError(f"not a list of string literals ({e.args[0]})") from None
  if not closed:
    raise ValueError("not a bracketed list of strings")
  return out


def parse_id_list(text: str) -> list[str]:
  """Ids of a numpy-style integer list "[123 456]" (commas allowed) -> ['123', '456']."""
  text = text.strip()
  if not (text.startswith("[") and text.endswith("]")):
    raise ValueError(f"not a bracketed list: {text[:40]!r}")
  ids = text[1:-1].replace(",", " ").split()
  for doc_id in ids:
    if not _INTEGER.fullmatch(doc_id):
      raise ValueError(f"not an integer id: {doc_id!r}")
  return ids


def _rows(path: pathlib.Path, required: Sequence[str]) -> Iterator[tuple[int, dict]]:
  """(first line of the row, column -> value) of a CSV file with a header line."""
  if not path.is_file():
    raise _error(path, "missing file")
  with open(path, encoding="utf-8-sig", newline="") as f:
    reader = csv.reader(f, strict=True)
    end = 0  # Last physical line read; quoted fields may span several lines.
    header = None
    while True:
      start = end + 1
      try:
        row = next(reader, None)
      except csv.Error as e:
        raise _error(path, f"malformed CSV ({e})", start) from None
      except UnicodeDecodeError as e:
        raise _error(path, f"not UTF-8 ({e.reason})", start) from None
      end = reader.line_num
      if row is None:
        break
      if not row or row == [""]:
        continue
      if header is None:
        header = row
        missing = [column for column in required if column not in header]
        if missing:
          raise _error(path, f"header lacks column(s) {missing}", start)
        continue
      if len(row) != len(header):
        raise _error(path, f"expected {len(header)} columns, got {len(row)}", start)
      yield start, dict(zip(header, row))
    if header is None:
      raise _error(path, "empty file")


def read_corpus(path: pathlib.Path) -> dict[str, Document]:
  """doc_id -> Document, in file order."""
  docs: dict[str, Document] = {}
  first_line: dict[str, int] = {}
  for line, row in _rows(path, ("doc_id", "title", "abstract")):
    doc_id = row["doc_id"].strip()
    if not _INTEGER.fullmatch(doc_id):
      raise _error(path, f"not an integer: {doc_id!r}", line, "doc_id")
    if doc_id in docs:
      raise _error(path, f"duplicate document {doc_id} (first on line "
                   f"{first_line[doc_id]})", line, "doc_id")
    try:
      sentences = tuple(s.strip() for s in parse_string_list(row["abstract"]) if s.strip())
    except ValueError as e:
      raise _error(path, str(e), line, "abstract") from None
    doc = Document(doc_id, row["title"].strip(), sentences)
    if not doc.text:
      raise _error(path, "document without title or abstract", line, "abstract")
    docs[doc_id] = doc
    first_line[doc_id] = line
  if not docs:
    raise _error(path, "file holds no documents")
  return docs


def read_claims(path: pathlib.Path, docs: dict[str, Document]) -> list[Claim]:
  """Claims that cite at least one document, in order of first appearance."""
  claims: dict[int, Claim] = {}
  first_line: dict[int, int] = {}
  for line, row in _rows(path, ("id", "claim", "cited_doc_ids")):
    claim_id = row["id"].strip()
    if not _INTEGER.fullmatch(claim_id):
      raise _error(path, f"not an integer: {claim_id!r}", line, "id")
    text = row["claim"].strip()
    if not text:
      raise _error(path, "empty claim", line, "claim")
    try:
      cited = parse_id_list(row["cited_doc_ids"])
    except ValueError as e:
      raise _error(path, str(e), line, "cited_doc_ids") from None
    unknown = [doc_id for doc_id in cited if doc_id not in docs]
    if unknown:
      raise _error(path, f"document(s) {unknown} not in {CORPUS_FILE}", line,
                   "cited_doc_ids")
    key = int(claim_id)
    if key in claims:
      if claims[key].text != text:
        raise _error(path, f"claim {key} has another text on line {first_line[key]}",
                     line, "claim")
      cited = [*claims[key].cited, *cited]
    else:
      first_line[key] = line
    claims[key] = Claim(key, text, tuple(dict.fromkeys(cited)))
  return [claim for claim in claims.values() if claim.cited]


def pseudo_queries(docs: dict[str, Document], per_doc: int,
                   seed: int = 0) -> list[records.Request]:
  """Inverse-cloze requests: `per_doc` distinct abstract sentences of each document."""
  requests = []
  for doc in docs.values():
    rng = random.Random(f"{seed}:{doc.doc_id}")  # str seeds hash with SHA-512: stable.
    for sentence in rng.sample(doc.sentences, min(per_doc, len(doc.sentences))):
      requests.append(records.Request(sentence, (), (doc.doc_id,)))
  return requests


def convert(source_dir, out_dir, *, pseudo_queries_per_doc: int = 0, seed: int = 0,
            overwrite: bool = False) -> pathlib.Path:
  """Converts the raw SciFact CSVs in `source_dir` into a JSONL dataset at `out_dir`.

  Args:
    source_dir: Folder with corpus_train.csv and claims_{train,validation}.csv.
    out_dir: Destination; `write_jsonl_dataset` writes a temporary sibling folder and
      renames it, so a failed conversion leaves nothing behind.
    pseudo_queries_per_doc: Inverse-cloze training requests per document (module doc).
    seed: Seed of the pseudo-query sentence draws.
    overwrite: Replace an existing `out_dir`.

  Returns:
    `out_dir` as a path.

  Raises:
    DatasetFormatError: naming the file, line and field of the first bad input.
    FileExistsError: `out_dir` exists and `overwrite` is False.
  """
  if pseudo_queries_per_doc < 0:
    raise ValueError(f"pseudo_queries_per_doc must be >= 0, got {pseudo_queries_per_doc}")
  source_dir, out_dir = pathlib.Path(source_dir), pathlib.Path(out_dir)
  if out_dir.exists() and not overwrite:  # Fail before the work (the writer checks too).
    raise FileExistsError(f"{out_dir} exists; pass overwrite=True to replace it")
  docs = read_corpus(source_dir / CORPUS_FILE)
  train_claims = read_claims(source_dir / TRAIN_CLAIMS_FILE, docs)
  test_claims = read_claims(source_dir / TEST_CLAIMS_FILE, docs)
  splits = {split: [] for split in records.REQUEST_SPLITS}
  for claim in train_claims:
    if claim.claim_id % VALID_EVERY == 0:
      splits["validation"].append(records.Request(claim.text, (), claim.cited))
    else:
      splits["train"].extend(records.Request(claim.text, (), (doc_id,))
                             for doc_id in claim.cited)
  splits["train"].extend(pseudo_queries(docs, pseudo_queries_per_doc, seed))
  splits["test"] = [records.Request(claim.text, (), claim.cited) for claim in test_claims]
  items = [records.Item(doc.doc_id, doc.text) for doc in docs.values()]
  return jsonl_format.write_jsonl_dataset(out_dir, items, splits, overwrite=overwrite)

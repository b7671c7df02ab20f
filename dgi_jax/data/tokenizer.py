"""WordPiece tokenizer trained on the dataset, and the token layouts of items and requests.

Item:     the item text, truncated to `max_item_len`.
Request:  `query [SEP] newest title [SEP] older title ...`, truncated to
          `max_query_len`. The most recent history items come first so that
          truncation drops the oldest. An empty query yields `[SEP] newest title ...`,
          keeping one layout for search and for pure recommendation.
Id 0 is padding; the encoder masks it.
"""

import json
import os
import re
import uuid
from typing import Iterable, Sequence

from etils import epath
import numpy as np
import tokenizers
from tokenizers import models, normalizers, pre_tokenizers, trainers

PAD, UNK, SEP = "[PAD]", "[UNK]", "[SEP]"
PAD_ID, UNK_ID, SEP_ID = 0, 1, 2


class Tokenizer:
  """A lower-casing WordPiece tokenizer with `[PAD]`=0, `[UNK]`=1, `[SEP]`=2."""

  def __init__(self, hf_tokenizer: tokenizers.Tokenizer):
    for token, expected in ((PAD, PAD_ID), (UNK, UNK_ID), (SEP, SEP_ID)):
      if hf_tokenizer.token_to_id(token) != expected:
        raise ValueError(f"tokenizer maps {token} to {hf_tokenizer.token_to_id(token)}, "
                         f"expected {expected}")
    self._tok = hf_tokenizer

  @classmethod
  def train(cls, texts: Iterable[str], vocab_size: int) -> "Tokenizer":
    """Trains WordPiece on `texts` (item texts and training queries)."""
    tok = tokenizers.Tokenizer(models.WordPiece(unk_token=UNK))
    tok.normalizer = normalizers.Sequence(
        [normalizers.NFD(), normalizers.Lowercase(), normalizers.StripAccents()])
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size,
                                        special_tokens=[PAD, UNK, SEP],
                                        show_progress=False)
    tok.train_from_iterator(texts, trainer)
    return cls(tok)

  @classmethod
  def load(cls, path: os.PathLike | str) -> "Tokenizer":
    """Loads a tokenizer saved by `save` (local or object-store path)."""
    return cls(tokenizers.Tokenizer.from_str(epath.Path(path).read_text()))

  @classmethod
  def from_json(cls, obj: dict) -> "Tokenizer":
    """Rebuilds a tokenizer from `to_json()` (as stored in a checkpoint)."""
    return cls(tokenizers.Tokenizer.from_str(json.dumps(obj)))

  def to_json(self) -> dict:
    """The tokenizer as a JSON object (vocabulary, normaliser, model)."""
    return json.loads(self._tok.to_str())

  def save(self, path: os.PathLike | str) -> None:
    """Writes the tokenizer JSON atomically.

    Locally through a temporary file and a rename; an object-store upload (gs://...) is
    atomic by itself.
    """
    path = epath.Path(path)
    text = self._tok.to_str(pretty=True)
    if "://" in os.fspath(path):
      path.write_text(text)
      return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}"
    try:
      tmp.write_text(text)
      tmp.replace(path)
    finally:
      if tmp.exists():
        tmp.unlink()

  @property
  def vocab_size(self) -> int:
    return self._tok.get_vocab_size()

  def tokens(self, text: str) -> list[str]:
    """The word pieces of `text` (for inspection and tests)."""
    return self._tok.encode(text, add_special_tokens=False).tokens

  def ids_to_tokens(self, ids: Sequence[int]) -> list[str]:
    """Token strings of ids, padding included."""
    return [self._tok.id_to_token(int(i)) for i in ids]

  def _encode_all(self, texts: Sequence[str]) -> list[list[int]]:
    return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

  def encode_items(self, texts: Sequence[str], max_len: int) -> np.ndarray:
    """Returns int32 [len(texts), max_len] token ids, truncated and 0-padded."""
    out = np.zeros((len(texts), max_len), np.int32)
    for row, ids in enumerate(self._encode_all(texts)):
      ids = ids[:max_len]
      out[row, :len(ids)] = ids
    return out

  def encode_queries(self, queries: Sequence[str]) -> list[list[int]]:
    """Token ids of each query (unpadded)."""
    return self._encode_all(queries)

  def encode_requests(self, queries: Sequence[str],
                      history_texts: Sequence[Sequence[str]], max_len: int,
                      max_history: int, max_title_len: int | None = None) -> np.ndarray:
    """Returns int32 [len(queries), max_len] request token ids.

    Args:
      queries: Query of each request ('' allowed).
      history_texts: Per request, item texts oldest first.
      max_len: Tokens per request (truncated, then 0-padded).
      max_history: Most recent history items used.
      max_title_len: Truncate each title to this many tokens first; the training
        pipeline reads titles from the catalogue matrix, i.e. with `max_item_len`.
    """
    if len(queries) != len(history_texts):
      raise ValueError(f"{len(queries)} queries but {len(history_texts)} histories")
    recent = [list(h)[max(len(h) - max_history, 0):] if max_history > 0 else []
              for h in history_texts]
    pieces = self._encode_all(list(queries) + [t for titles in recent for t in titles])
    query_ids, titles = pieces[:len(queries)], iter(pieces[len(queries):])
    history_ids = [[next(titles)[:max_title_len] for _ in r] for r in recent]
    return assemble_requests(query_ids, history_ids, max_len, max_history)


def assemble_requests(query_ids: Sequence[Sequence[int]],
                      history_ids: Sequence[Sequence[Sequence[int]]], max_len: int,
                      max_history: int) -> np.ndarray:
  """Lays out `query [SEP] newest title [SEP] ...` from token ids.

  Args:
    query_ids: Token ids of each query.
    history_ids: Per request, token ids of each history title, oldest first.
    max_len: Tokens per request (truncated, then 0-padded).
    max_history: Most recent history items used.

  Returns:
    int32 [len(query_ids), max_len].
  """
  out = np.zeros((len(query_ids), max_len), np.int32)
  for row, (query, history) in enumerate(zip(query_ids, history_ids, strict=True)):
    ids = list(query[:max_len])
    for title in list(history)[::-1][:max(max_history, 0)]:
      if len(ids) + 1 >= max_len:  # No room for a title token after the [SEP].
        break
      ids.append(SEP_ID)
      ids.extend(title)
    ids = ids[:max_len]
    out[row, :len(ids)] = ids
  return out


def tokenizer_path(directory: os.PathLike | str, dataset_version: str,
                   vocab_size: int) -> epath.Path:
  """File of the tokenizer of a dataset version, so a data change retrains it."""
  name = re.sub(r"[^A-Za-z0-9._-]+", "_", dataset_version)
  return epath.Path(directory) / f"wordpiece_{name}_v{vocab_size}.json"


def prepare_tokenizer(dataset, data_config, directory: os.PathLike | str, *,
                      build: bool = True) -> Tokenizer:
  """Loads the dataset's tokenizer from `directory`, training and saving it if needed.

  It is trained on the item texts and the training queries, never on evaluation
  queries. With several processes, let one build and the others read after it.

  Args:
    dataset: A `dataset.Dataset`.
    data_config: The `config.data` ConfigDict (`vocab_size`).
    directory: Where tokenizer files are kept.
    build: Whether this process may train a missing tokenizer.
  """
  path = tokenizer_path(directory, dataset.version, data_config.vocab_size)
  if path.is_file():
    return Tokenizer.load(path)
  if not build:
    raise FileNotFoundError(f"{path} does not exist; the building process must train "
                            "it first")
  source = dataset.source("train")
  queries = (row["query"].decode("utf-8")
             for row in source.__getitems__(range(len(source))))
  tokenizer = Tokenizer.train(
      (text for texts in (dataset.item_texts, queries) for text in texts),
      data_config.vocab_size)
  tokenizer.save(path)
  return tokenizer

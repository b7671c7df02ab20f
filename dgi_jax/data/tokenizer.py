"""Tokenizers and the token layouts of items and requests.

Two tokenizers share one interface, `RequestTokenizer`:
  * `Tokenizer`: a WordPiece trained on the dataset (`[PAD]`=0, `[UNK]`=1, `[SEP]`=2),
    for encoders trained from scratch.
  * `PretrainedTokenizer`: a pretrained checkpoint's own tokenizer (BERT family or T5),
    read by `load_pretrained_tokenizer` from `tokenizer.json`, `vocab.txt` or
    `spiece.model`.

Each lays out items and requests with its own special tokens (its `Layout`):
  Item:     prefix text suffix, truncated to `max_item_len`.
  Request:  prefix query sep newest title sep older title ... suffix, truncated to
            `max_query_len`.
  scratch:  item `text`; request `query [SEP] newest title [SEP] older title ...`.
  BERT:     item `[CLS] text [SEP]`; request `[CLS] query [SEP] newest title [SEP] older
            title [SEP] ...`: the checkpoint tokenizer's own pair encoding of (query,
            newest title), continued with one `title [SEP]` segment per older item.
  T5:       item `text </s>`; request `query </s> newest title </s> older title </s>
            ...`: T5 has no CLS/SEP, and its own pair encoding ends each segment with
            EOS, so EOS is the separator too.
The pretrained layouts come from the checkpoint tokenizer's post-processor (or, for a bare
`spiece.model`, its EOS id), never from hard-coded ids. The most recent history items come
first so that truncation drops the oldest. An empty query keeps its empty segment
(`[SEP] newest ...`, `[CLS] [SEP] newest ... [SEP]`, `</s> newest ... </s>`; the BERT one
is what the checkpoint tokenizer gives for the pair ('', title)), keeping one layout for
search and for pure recommendation.
Id 0 is padding; the encoders mask it, so every tokenizer must pad with id 0.
"""

import abc
import base64
import dataclasses
import json
import os
import re
import uuid
from typing import Iterable, Sequence

from etils import epath
import numpy as np
import sentencepiece
import tokenizers
from tokenizers import (decoders, models, normalizers, pre_tokenizers, processors,
                        trainers)

from dgi_jax.data import records

PAD, UNK, SEP = "[PAD]", "[UNK]", "[SEP]"
PAD_ID, UNK_ID, SEP_ID = 0, 1, 2


def _wordpiece_tokenizer(model: models.WordPiece) -> tokenizers.Tokenizer:
  """A tokenizer of `model` with the normalisation and word splitting WordPiece learns on."""
  tok = tokenizers.Tokenizer(model)
  tok.normalizer = normalizers.Sequence(
      [normalizers.NFD(), normalizers.Lowercase(), normalizers.StripAccents()])
  tok.pre_tokenizer = pre_tokenizers.Sequence(
      [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
  return tok

# `to_json` wraps each tokenizer as {"kind": ..., ...}; raw Hugging Face tokenizer JSON
# (what checkpoints written before pretrained tokenizers hold) is the scratch kind.
SCRATCH_KIND, PRETRAINED_KIND = "scratch_wordpiece", "pretrained"
# Files `load_pretrained_tokenizer` reads, in order of preference.
PRETRAINED_FILES = ("tokenizer.json", "vocab.txt", "spiece.model")


@dataclasses.dataclass(frozen=True)
class Layout:
  """Special token ids around the text segments of items and requests.

  Item:    prefix + text + suffix
  Request: prefix + query + separator + newest title + separator + ... + suffix
  """
  prefix: tuple[int, ...] = ()
  separator: tuple[int, ...] = ()
  suffix: tuple[int, ...] = ()

  def _room(self, max_len: int) -> int:
    return max_len - len(self.prefix) - len(self.suffix)

  def item(self, text: Sequence[int], max_len: int) -> list[int]:
    """prefix + text + suffix, at most max_len ids; the text is truncated, so an item
    always ends in its suffix (as the checkpoint tokenizer's own truncation does)."""
    if self._room(max_len) < 0:  # No room even for the special tokens.
      return [*self.prefix, *text, *self.suffix][:max_len]
    return [*self.prefix, *text[:self._room(max_len)], *self.suffix]

  def request(self, query: Sequence[int], titles: Iterable[Sequence[int]],
              max_len: int) -> list[int]:
    """The request of a query and titles (newest first), at most max_len ids.

    Truncation always keeps the closing suffix, so a BERT request ends in [SEP] as the
    checkpoint tokenizer's own truncation ends it, and cuts the last title that fits.
    A title is started only if one of its tokens fits after the separator: no empty
    segments (`... [SEP] [SEP]`), and the scratch layout never ends in a bare [SEP].
    """
    room = self._room(max_len)
    if room < 0:  # No room even for the special tokens.
      return [*self.prefix, *query, *self.suffix][:max_len]
    body = list(query[:room])
    for title in titles:
      free = room - len(body) - len(self.separator)
      if free < 1:
        break
      body += [*self.separator, *title[:free]]
    return [*self.prefix, *body, *self.suffix]

  def strip_item(self, ids: Sequence[int]) -> list[int]:
    """The text ids of an unpadded item laid out by `item`."""
    ids = list(ids)
    start = len(self.prefix) if tuple(ids[:len(self.prefix)]) == self.prefix else 0
    end = len(ids) - len(self.suffix)
    if end < start or tuple(ids[end:]) != self.suffix:
      end = len(ids)
    return ids[start:end]


class RequestTokenizer(abc.ABC):
  """What the data pipeline and the retriever need from a tokenizer.

  Subclasses split texts into ids (`_encode_all`, no special tokens) and give their
  `layout`; the item and request layouts are assembled here, so every kind truncates
  alike.
  """

  pad_id: int = PAD_ID  # The encoders mask id 0: every kind pads with it.
  layout: Layout

  @property
  @abc.abstractmethod
  def vocab_size(self) -> int:
    """Number of token ids."""

  @abc.abstractmethod
  def tokens(self, text: str) -> list[str]:
    """The pieces of `text`, without special tokens (for inspection and tests)."""

  @abc.abstractmethod
  def ids_to_tokens(self, ids: Sequence[int]) -> list[str]:
    """Token strings of ids, padding and special tokens included."""

  @abc.abstractmethod
  def to_json(self) -> dict:
    """The tokenizer as a JSON object; `tokenizer_from_json` rebuilds it."""

  @abc.abstractmethod
  def _encode_all(self, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of each text, without special tokens."""

  def encode_items(self, texts: Sequence[str], max_len: int) -> np.ndarray:
    """Returns int32 [len(texts), max_len] item token ids, laid out, truncated and
    0-padded."""
    out = np.zeros((len(texts), max_len), np.int32)
    for row, ids in enumerate(self._encode_all(texts)):
      ids = self.layout.item(ids, max_len)
      out[row, :len(ids)] = ids
    return out

  def encode_queries(self, queries: Sequence[str]) -> list[list[int]]:
    """Token ids of each query (unpadded, no special tokens)."""
    return self._encode_all(queries)

  def title_ids(self, catalogue_tokens: np.ndarray) -> list[list[int]]:
    """Text ids of each item of int32 [N, L] `encode_items` rows, without padding and
    the item layout's special tokens: the history titles of requests."""
    return [self.layout.strip_item(row[row != self.pad_id].tolist())
            for row in np.asarray(catalogue_tokens)]

  def assemble_requests(self, query_ids: Sequence[Sequence[int]],
                        history_ids: Sequence[Sequence[Sequence[int]]], max_len: int,
                        max_history: int) -> np.ndarray:
    """Lays out requests from token ids (see `Layout.request`).

    Args:
      query_ids: Token ids of each query, no special tokens.
      history_ids: Per request, token ids of each history title, oldest first.
      max_len: Tokens per request (truncated, then 0-padded).
      max_history: Most recent history items used.

    Returns:
      int32 [len(query_ids), max_len].
    """
    out = np.zeros((len(query_ids), max_len), np.int32)
    for row, (query, history) in enumerate(zip(query_ids, history_ids, strict=True)):
      ids = self.layout.request(query, records.recent_history(list(history),
                                                              max_history)[::-1], max_len)
      out[row, :len(ids)] = ids
    return out

  def encode_requests(self, queries: Sequence[str],
                      history_texts: Sequence[Sequence[str]], max_len: int,
                      max_history: int, max_title_len: int | None = None) -> np.ndarray:
    """Returns int32 [len(queries), max_len] request token ids.

    Args:
      queries: Query of each request ('' allowed).
      history_texts: Per request, item texts oldest first.
      max_len: Tokens per request (truncated, then 0-padded).
      max_history: Most recent history items used.
      max_title_len: Read each title as an item of this many tokens first (special
        tokens included), as the training pipeline reads titles from the catalogue
        matrix, i.e. with `max_item_len`.
    """
    if len(queries) != len(history_texts):
      raise ValueError(f"{len(queries)} queries but {len(history_texts)} histories")
    recent = [records.recent_history(list(h), max_history) for h in history_texts]
    texts = [t for titles in recent for t in titles]
    if max_title_len is None:
      flat = self._encode_all(texts)
    else:
      flat = self.title_ids(self.encode_items(texts, max_title_len))
    titles = iter(flat)
    history_ids = [[next(titles) for _ in r] for r in recent]
    return self.assemble_requests(self.encode_queries(queries), history_ids, max_len,
                                  max_history)


class Tokenizer(RequestTokenizer):
  """A lower-casing WordPiece trained on the dataset, `[PAD]`=0, `[UNK]`=1, `[SEP]`=2.

  Items are bare text; requests separate their segments with `[SEP]`.
  """

  layout = Layout(separator=(SEP_ID,))

  def __init__(self, hf_tokenizer: tokenizers.Tokenizer):
    for token, expected in ((PAD, PAD_ID), (UNK, UNK_ID), (SEP, SEP_ID)):
      if hf_tokenizer.token_to_id(token) != expected:
        raise ValueError(f"tokenizer maps {token} to {hf_tokenizer.token_to_id(token)}, "
                         f"expected {expected}")
    self._tok = hf_tokenizer

  @classmethod
  def train(cls, texts: Iterable[str], vocab_size: int) -> "Tokenizer":
    """Trains WordPiece on `texts` (item texts and training queries).

    Deterministic: the same texts give the same vocabulary in every process. Hugging
    Face's trainer alone does not (huggingface/tokenizers#1794): it numbers the
    continuing-subword tokens ('##e') in hash-map order, and those numbers break ties
    between equally frequent merges, so two runs on one dataset learnt different
    vocabularies and trained different models. Declared up front, in sorted order, those
    tokens get fixed ids; the tokenizer returned holds them as ordinary vocabulary.
    """
    texts = list(texts)
    tok = _wordpiece_tokenizer(models.WordPiece(unk_token=UNK))
    continuing = sorted({char for text in texts
                         for word, _ in tok.pre_tokenizer.pre_tokenize_str(
                             tok.normalizer.normalize_str(text))
                         for char in word[1:]})
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size, special_tokens=[PAD, UNK, SEP, *("##" + c for c in continuing)],
        show_progress=False)
    tok.train_from_iterator(texts, trainer)
    plain = _wordpiece_tokenizer(models.WordPiece(tok.get_vocab(with_added_tokens=False),
                                                  unk_token=UNK))
    plain.add_special_tokens([PAD, UNK, SEP])
    return cls(plain)

  @classmethod
  def load(cls, path: os.PathLike | str) -> "Tokenizer":
    """Loads a tokenizer saved by `save` (local or object-store path)."""
    return cls(tokenizers.Tokenizer.from_str(epath.Path(path).read_text()))

  @classmethod
  def from_json(cls, obj: dict) -> "Tokenizer":
    """Rebuilds a tokenizer from `to_json()`, or from the raw Hugging Face JSON that
    checkpoints written before `to_json` wrapped it hold."""
    if "kind" in obj:
      if obj["kind"] != SCRATCH_KIND:
        raise ValueError(f"not a scratch tokenizer: kind {obj['kind']!r}")
      obj = obj["tokenizer"]
    return cls(tokenizers.Tokenizer.from_str(json.dumps(obj)))

  def to_json(self) -> dict:
    """{"kind": SCRATCH_KIND, "tokenizer": the Hugging Face tokenizer JSON}."""
    return {"kind": SCRATCH_KIND, "tokenizer": json.loads(self._tok.to_str())}

  def save(self, path: os.PathLike | str) -> None:
    """Writes the Hugging Face tokenizer JSON atomically.

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


# ------------------------------------------------------------ pretrained checkpoints

_PROBE = ("a", "b")  # Texts whose encodings show where the post-processor adds tokens.


def _special_runs(encoding: tokenizers.Encoding) -> list[tuple[int, ...]]:
  """The runs of special token ids before, between and after the texts of an
  encoding: [before, after] for one text, [before, between, after] for a pair."""
  runs, run, current = [], [], None
  for token_id, sequence in zip(encoding.ids, encoding.sequence_ids):
    if sequence is None:
      run.append(token_id)
    elif sequence != current:
      runs.append(tuple(run))
      run, current = [], sequence
  return [*runs, tuple(run)]


class _HFBackend:
  """A Hugging Face `tokenizers` tokenizer: a checkpoint's tokenizer.json, or one
  built from its vocab.txt."""

  name = "tokenizers"

  def __init__(self, hf: tokenizers.Tokenizer, pad_token: str | None):
    # A checkpoint may pad and truncate (MiniLM's pads to 128): the layouts do both.
    hf.no_padding()
    hf.no_truncation()
    self.hf = hf
    self.pad_token = pad_token

  @classmethod
  def from_json(cls, obj: dict) -> "_HFBackend":
    return cls(tokenizers.Tokenizer.from_str(json.dumps(obj["tokenizer"])),
               obj["pad_token"])

  def to_json(self) -> dict:
    return {"backend": self.name, "pad_token": self.pad_token,
            "tokenizer": json.loads(self.hf.to_str())}

  @property
  def pad_id(self) -> int | None:
    return None if self.pad_token is None else self.hf.token_to_id(self.pad_token)

  @property
  def vocab_size(self) -> int:
    return self.hf.get_vocab_size()

  def encode(self, texts: Sequence[str]) -> list[list[int]]:
    return [e.ids for e in self.hf.encode_batch(list(texts), add_special_tokens=False)]

  def pieces(self, text: str) -> list[str]:
    return self.hf.encode(text, add_special_tokens=False).tokens

  def id_to_token(self, token_id: int) -> str:
    return self.hf.id_to_token(token_id)

  def layout(self, source: str) -> Layout:
    """The special tokens the post-processor puts around one text and between and
    around a pair (BERT: [CLS] A [SEP] B [SEP]; T5: A </s> B </s>)."""
    single, pair = self.hf.encode(_PROBE[0]), self.hf.encode(*_PROBE)
    one, two = _special_runs(single), _special_runs(pair)
    if len(one) != 2 or len(two) != 3 or one != [two[0], two[2]] or not two[1]:
      raise ValueError(
          f"{source}: cannot lay out items and requests with this tokenizer: it "
          f"encodes one text as {single.tokens} and a pair as {pair.tokens}; expected "
          "the same special tokens around both and at least one between the pair")
    return Layout(*two)


class _SentencePieceBackend:
  """A bare SentencePiece model (spiece.model), laid out as T5's tokenizer does."""

  name = "sentencepiece"

  def __init__(self, model: bytes):
    self.model = model
    self.sp = sentencepiece.SentencePieceProcessor(model_proto=model)

  @classmethod
  def from_json(cls, obj: dict) -> "_SentencePieceBackend":
    return cls(base64.b64decode(obj["spiece_model"]))

  def to_json(self) -> dict:
    # The model bytes travel in the checkpoint, which then needs no tokenizer file.
    return {"backend": self.name,
            "spiece_model": base64.b64encode(self.model).decode("ascii")}

  @property
  def pad_id(self) -> int | None:
    return self.sp.pad_id() if self.sp.pad_id() >= 0 else None

  @property
  def pad_token(self) -> str | None:
    return None if self.pad_id is None else self.sp.id_to_piece(self.pad_id)

  @property
  def vocab_size(self) -> int:
    return self.sp.get_piece_size()

  def encode(self, texts: Sequence[str]) -> list[list[int]]:
    return [list(ids) for ids in self.sp.encode(list(texts), out_type=int)]

  def pieces(self, text: str) -> list[str]:
    return self.sp.encode(text, out_type=str)

  def id_to_token(self, token_id: int) -> str:
    return self.sp.id_to_piece(token_id)

  def layout(self, source: str) -> Layout:
    """T5's: no CLS/SEP, EOS closes every segment (`A </s> B </s>`), so EOS is also
    the request separator."""
    eos = self.sp.eos_id()
    if eos < 0:
      raise ValueError(f"{source}: spiece.model has no EOS token to end segments with")
    return Layout(separator=(eos,), suffix=(eos,))


_BACKENDS = {b.name: b for b in (_HFBackend, _SentencePieceBackend)}


class PretrainedTokenizer(RequestTokenizer):
  """A pretrained checkpoint's own tokenizer (BERT family or T5) and its layouts.

  Built by `load_pretrained_tokenizer`; `source` names the checkpoint directory.
  """

  def __init__(self, backend: _HFBackend | _SentencePieceBackend, source: str):
    if backend.pad_id != PAD_ID:
      found = ("has no padding token" if backend.pad_token is None else
               f"pads with {backend.pad_token!r}, id {backend.pad_id}")
      raise ValueError(f"{source}: the tokenizer {found}; the encoders mask token id "
                       f"{PAD_ID}, so the padding id must be {PAD_ID}")
    self._backend = backend
    self.source = source
    self.layout = backend.layout(source)

  @classmethod
  def from_json(cls, obj: dict) -> "PretrainedTokenizer":
    """Rebuilds a tokenizer from `to_json()` (as stored in a checkpoint)."""
    if obj.get("kind") != PRETRAINED_KIND:
      raise ValueError(f"not a pretrained tokenizer: kind {obj.get('kind')!r}")
    return cls(_BACKENDS[obj["backend"]].from_json(obj), obj["source"])

  def to_json(self) -> dict:
    """{"kind": PRETRAINED_KIND, "source", "backend", and the backend's tokenizer}."""
    return {"kind": PRETRAINED_KIND, "source": self.source, **self._backend.to_json()}

  @property
  def vocab_size(self) -> int:
    return self._backend.vocab_size

  def tokens(self, text: str) -> list[str]:
    return self._backend.pieces(text)

  def ids_to_tokens(self, ids: Sequence[int]) -> list[str]:
    return [self._backend.id_to_token(int(i)) for i in ids]

  def _encode_all(self, texts: Sequence[str]) -> list[list[int]]:
    return self._backend.encode(texts)


def _read_json(file: epath.Path) -> dict:
  return json.loads(file.read_text(encoding="utf-8")) if file.is_file() else {}


def _tokenizer_config(directory: epath.Path) -> dict:
  """special_tokens_map.json updated by tokenizer_config.json, special tokens as
  strings (newer configs write them as {"content": ...})."""
  config = {**_read_json(directory / "special_tokens_map.json"),
            **_read_json(directory / "tokenizer_config.json")}
  return {k: v["content"] if isinstance(v, dict) and "content" in v else v
          for k, v in config.items()}


def _read_tokenizer_json(directory: epath.Path) -> _HFBackend:
  hf = tokenizers.Tokenizer.from_str((directory / "tokenizer.json").read_text(
      encoding="utf-8"))
  pad_token = (_tokenizer_config(directory).get("pad_token")
               or (hf.padding or {}).get("pad_token"))
  if pad_token is None:  # Neither config names one: the conventional names.
    pad_token = next((t for t in ("[PAD]", "<pad>") if hf.token_to_id(t) is not None),
                     None)
  return _HFBackend(hf, pad_token)


def _read_vocab(file: epath.Path) -> dict[str, int]:
  # One token a line; not `splitlines`, which also splits at characters some
  # vocabularies hold (U+2028, U+0085). A repeated token keeps its last line, as in
  # transformers' `load_vocab`.
  lines = file.read_text(encoding="utf-8").replace("\r\n", "\n").split("\n")
  if lines[-1] == "":
    lines.pop()
  return {token: i for i, token in enumerate(lines)}


def _read_vocab_txt(directory: epath.Path) -> _HFBackend:
  """A BERT WordPiece tokenizer as transformers' `BertTokenizer` reads vocab.txt."""
  config = _tokenizer_config(directory)
  vocab = _read_vocab(directory / "vocab.txt")
  names = {k: config.get(f"{k}_token", f"[{k.upper()}]")
           for k in ("pad", "unk", "cls", "sep", "mask")}
  missing = [names[k] for k in ("unk", "cls", "sep") if names[k] not in vocab]
  if missing:
    raise ValueError(f"vocab.txt has no {', '.join(missing)}")
  hf = tokenizers.Tokenizer(models.WordPiece(vocab, unk_token=names["unk"],
                                             max_input_chars_per_word=100))
  hf.normalizer = normalizers.BertNormalizer(
      clean_text=True, handle_chinese_chars=config.get("tokenize_chinese_chars", True),
      strip_accents=config.get("strip_accents"),
      lowercase=config.get("do_lower_case", True))
  hf.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
  cls_token, sep = names["cls"], names["sep"]
  hf.post_processor = processors.TemplateProcessing(
      single=[cls_token, "$A", sep], pair=[cls_token, "$A", sep, "$B:1", f"{sep}:1"],
      special_tokens=[(cls_token, vocab[cls_token]), (sep, vocab[sep])])
  hf.decoder = decoders.WordPiece()
  # Special tokens written in a text stay whole, as `BertTokenizer` keeps them.
  hf.add_special_tokens([t for t in names.values() if t in vocab])
  return _HFBackend(hf, names["pad"])


def _read_spiece_model(directory: epath.Path) -> _SentencePieceBackend:
  return _SentencePieceBackend((directory / "spiece.model").read_bytes())


_READERS = dict(zip(PRETRAINED_FILES,
                    (_read_tokenizer_json, _read_vocab_txt, _read_spiece_model)))


def _one_line(error: Exception) -> str:
  return " ".join(str(error).split()) or type(error).__name__


def load_pretrained_tokenizer(path: os.PathLike | str) -> PretrainedTokenizer:
  """Loads the tokenizer of a Hugging Face-format checkpoint directory (local, gs://).

  Reads `tokenizer.json` (a fast BERT-family or T5 tokenizer) if present, else
  `vocab.txt` (BERT WordPiece, lower-cased unless tokenizer_config.json says
  do_lower_case false), else `spiece.model` (SentencePiece, T5 layout).

  Raises:
    ValueError: (one line naming the directory) no tokenizer file, an unreadable one,
      a padding id other than 0, or special tokens that give no request layout.
  """
  directory = epath.Path(path)
  looked_for = f"looked for {', '.join(PRETRAINED_FILES)}"
  for name, read in _READERS.items():
    if not (directory / name).is_file():
      continue
    try:
      backend = read(directory)
    except Exception as e:  # Each library raises its own kind: one line for all.
      raise ValueError(f"{directory}: cannot read {name}: {_one_line(e)} "
                       f"({looked_for})") from e
    return PretrainedTokenizer(backend, os.fspath(directory))
  raise ValueError(f"{directory}: no tokenizer file ({looked_for})")


def tokenizer_from_json(obj: dict) -> RequestTokenizer:
  """Rebuilds a tokenizer of either kind from its `to_json()` (as checkpoints hold
  it); raw Hugging Face tokenizer JSON, as older checkpoints hold it, is a scratch
  `Tokenizer`."""
  kind = obj.get("kind", SCRATCH_KIND if "model" in obj else None)
  if kind == SCRATCH_KIND:
    return Tokenizer.from_json(obj)
  if kind == PRETRAINED_KIND:
    return PretrainedTokenizer.from_json(obj)
  raise ValueError(f"not a tokenizer's JSON: kind {kind!r}, keys {sorted(obj)[:10]}")


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

"""grain input pipelines: a sharded, checkpointable training stream and ordered evaluation.

Training batches (numpy, host-local):
  query_tokens  int32 [b, max_query_len]  request tokens (see `tokenizer`)
  item_tokens   int32 [b, w]              target item text tokens (w: the width of
                                          `encode_catalogue`, <= max_item_len)
  item_index    int32 [b]                 target item index
  example_id    int32 [b]                 row of the training split
  history       int32 [b, max_history]    the most recent history items, oldest first,
                                          padded with -1
Evaluation batches add `relevant` (item indices padded with -1) and a `mask` that is
False on the rows padding the last batch.

With `data.history_repr` 'text' the history titles follow the query in `query_tokens`;
otherwise `query_tokens` hold the query alone and the model reads `history` as items.
"""

from typing import Iterator

from absl import flags
import grain
import numpy as np

from dgi_jax.data import dataset as dataset_lib
from dgi_jax.data import records
from dgi_jax.data import tokenizer as tokenizer_lib

PAD_INDEX = -1  # Fills `relevant` and `history` beyond a request's own items.

# Elements of the stream are whole batches: a few threads a few batches ahead keep up
# with a training step without taking the cores the step runs on.
_READ_OPTIONS = grain.ReadOptions(num_threads=2, prefetch_buffer_size=4)


# The catalogue matrix's width is a multiple of this (few distinct shapes to compile).
ITEM_WIDTH_MULTIPLE = 8


def encode_catalogue(dataset: dataset_lib.Dataset,
                     tokenizer: tokenizer_lib.RequestTokenizer,
                     data_config) -> np.ndarray:
  """Returns int32 [num_items, width] token ids of every item, laid out as the tokenizer
  lays out items and cut at `max_item_len`.

  `width` is the longest item's length rounded up to a multiple of ITEM_WIDTH_MULTIPLE
  (at most `max_item_len`): columns past it would be padding in every batch. The
  encoders mask padding, so an item's embedding does not depend on the width; on the
  built-in catalogue (items of at most 18 tokens, max_item_len 32) the train step's
  FLOPs fall 7% (docs/DESIGN.md, "Item width").
  """
  tokens = tokenizer.encode_items(dataset.item_texts, data_config.max_item_len)
  return trim_padding_columns(tokens, ITEM_WIDTH_MULTIPLE)


def trim_padding_columns(tokens: np.ndarray, multiple: int) -> np.ndarray:
  """`tokens` [n, L] (0 = padding, right-padded) without the trailing columns that are
  padding in every row, keeping a width that is a multiple of `multiple` (or L)."""
  used = int((tokens != tokenizer_lib.PAD_ID).any(axis=0).nonzero()[0].max(initial=-1)) + 1
  width = min(tokens.shape[1], -(-max(used, 1) // multiple) * multiple)
  return tokens[:, :width]


def _history_titles(titles: list, histories, data_config) -> list:
  """Per request, the token ids of the history titles the request text holds: all of
  `histories`' items with history_repr 'text', none when the model reads them as items."""
  if data_config.history_repr != "text":
    return [[] for _ in histories]
  return [[titles[i] for i in h] for h in histories]


def _decode(row: dict) -> tuple[int, str, np.ndarray, np.ndarray]:
  return (int(row["example_id"]), row["query"].decode("utf-8"),
          np.asarray(row["history"], np.int32).reshape(-1),
          np.asarray(row["relevant"], np.int32).reshape(-1))


class _TrainBatch:
  """Reads and encodes the training examples of a batch of indices.

  A class so that grain workers can pickle it. Reading a whole batch with one
  `__getitems__` call is several times faster than grain fetching records one by
  one. Target and history titles come from the precomputed catalogue matrix; only
  the queries are tokenised here.
  """

  def __init__(self, source, tokenizer, catalogue_tokens, data_config,
               rows: slice = slice(None)):
    self._source = source
    self._rows = rows  # This host's rows of each global batch of indices.
    self._tokenizer = tokenizer
    self._catalogue_tokens = catalogue_tokens
    self._title_ids = tokenizer.title_ids(catalogue_tokens)
    self._data_config = data_config

  def __call__(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    example_ids, queries, histories, targets = [], [], [], []
    max_history = self._data_config.max_history
    for row in self._source.__getitems__(indices[self._rows].tolist()):
      example_id, query, history, relevant = _decode(row)
      if relevant.shape != (1,):
        raise ValueError(f"training example {example_id} has {relevant.size} targets")
      example_ids.append(example_id)
      queries.append(query)
      histories.append(records.recent_history(history, max_history))
      targets.append(relevant[0])
    item_index = np.asarray(targets, np.int32)
    return {
        "query_tokens": self._tokenizer.assemble_requests(
            self._tokenizer.encode_queries(queries),
            _history_titles(self._title_ids, histories, self._data_config),
            self._data_config.max_query_len, max_history),
        "item_tokens": self._catalogue_tokens[item_index],
        "item_index": item_index,
        "example_id": np.asarray(example_ids, np.int32),
        "history": pad_rows(histories, max_history),
    }


def make_train_iterator(dataset: dataset_lib.Dataset,
                        tokenizer: tokenizer_lib.RequestTokenizer, data_config,
                        host_batch_size: int, seed: int, process_index: int = 0,
                        process_count: int = 1,
                        catalogue_tokens: np.ndarray | None = None):
  """Returns an endless, checkpointable iterator of this host's training batches.

  The whole split is shuffled (reshuffled every epoch) and cut into global batches
  of `host_batch_size * process_count` indices; host `p` reads only the records of
  rows `[p * host_batch_size, (p + 1) * host_batch_size)` of each. The global batch
  of a step is therefore the same for any number of hosts, so a run gives the same
  losses on 1 or N hosts, and the iterator state (`it.get_state()`, which
  `it.set_state(state)` resumes exactly) is the same on every host and depends only
  on the step.

  Args:
    dataset: The prepared dataset.
    tokenizer: Its tokenizer.
    data_config: `config.data` (max_query_len, max_item_len, max_history,
      worker_count).
    host_batch_size: Rows per batch on this host (remainders are dropped).
    seed: Shuffle seed (`config.data.shuffle_seed`).
    process_index: This host's index.
    process_count: Number of hosts.
    catalogue_tokens: `encode_catalogue(...)` output, if already computed.
  """
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} not in [0, {process_count})")
  if catalogue_tokens is None:
    catalogue_tokens = encode_catalogue(dataset, tokenizer, data_config)
  source = dataset.source("train")
  global_batch_size = host_batch_size * process_count
  if len(source) < global_batch_size:
    raise ValueError(f"{len(source)} training examples are fewer than one global batch "
                     f"({global_batch_size})")
  # The stream shuffles and batches indices; `_TrainBatch` reads this host's records.
  ds = grain.MapDataset.range(len(source)).shuffle(seed=seed).repeat()  # Reshuffles.
  ds = ds.batch(global_batch_size, drop_remainder=True)
  rows = slice(process_index * host_batch_size, (process_index + 1) * host_batch_size)
  ds = ds.map(_TrainBatch(source, tokenizer, catalogue_tokens, data_config, rows))
  iter_ds = ds.to_iter_dataset(_READ_OPTIONS)
  if data_config.worker_count > 0:
    # grain's worker pool reads absl flags; outside `app.run` (library use, tests)
    # they are unparsed and reading them raises, so take the defaults.
    if not flags.FLAGS.is_parsed():
      flags.FLAGS.mark_as_parsed()
    iter_ds = iter_ds.mp_prefetch(
        grain.MultiprocessingOptions(num_workers=data_config.worker_count))
  return iter(iter_ds)


def pad_rows(rows: list[np.ndarray], width: int) -> np.ndarray:
  """int32 [len(rows), width]: each row's values, then PAD_INDEX."""
  out = np.full((len(rows), width), PAD_INDEX, np.int32)
  for r, values in enumerate(rows):
    out[r, :len(values)] = values
  return out


def read_requests(dataset: dataset_lib.Dataset, split: str) -> dict:
  """Every request of `split` in file order (for retrievers that read text, e.g. BM25).

  Returns {"query": list of str, "history": list of int32 arrays (oldest first, whole),
  "relevant": int32 [Q, R] padded with -1, laid out as `iterate_eval` lays it out}.
  """
  source = dataset.source(split)
  rows = [_decode(row) for row in source.__getitems__(list(range(len(source))))]
  return {"query": [q for _, q, _, _ in rows], "history": [h for _, _, h, _ in rows],
          "relevant": pad_rows([r for _, _, _, r in rows], dataset.max_relevant(split))}


def iterate_eval(dataset: dataset_lib.Dataset,
                 tokenizer: tokenizer_lib.RequestTokenizer, data_config, split: str,
                 batch_size: int, process_index: int = 0, process_count: int = 1,
                 catalogue_tokens: np.ndarray | None = None
                 ) -> Iterator[dict[str, np.ndarray]]:
  """Yields fixed-size batches of `split` in file order, every example once.

  Batches hold query_tokens int32 [b, max_query_len] (laid out as in training),
  relevant int32 [b, R] (R = the split's largest relevant set), history int32
  [b, max_history] (the most recent items, oldest first), example_id int32 [b] and
  mask bool [b]; padding rows have mask False, example_id -1 and indices -1. With
  several hosts each takes a strided shard and all yield the same number of batches.
  """
  if catalogue_tokens is None:
    catalogue_tokens = encode_catalogue(dataset, tokenizer, data_config)
  titles = tokenizer.title_ids(catalogue_tokens)
  source = dataset.source(split)
  indices = np.arange(process_index, len(source), process_count)
  per_host = -(-len(source) // process_count)
  num_batches = -(-per_host // batch_size)
  width = dataset.max_relevant(split)
  max_history = data_config.max_history
  for b in range(num_batches):
    chunk = indices[b * batch_size:(b + 1) * batch_size].tolist()
    rows = [_decode(row) for row in source.__getitems__(chunk)] if chunk else []
    pad = batch_size - len(rows)
    histories = [records.recent_history(h, max_history) for _, _, h, _ in rows] + [[]] * pad
    query_ids = tokenizer.encode_queries([q for _, q, _, _ in rows]) + [[]] * pad
    yield {
        "query_tokens": tokenizer.assemble_requests(
            query_ids, _history_titles(titles, histories, data_config),
            data_config.max_query_len, max_history),
        "relevant": pad_rows([r for _, _, _, r in rows] + [[]] * pad, width),
        "history": pad_rows(histories, max_history),
        "example_id": np.asarray([e for e, _, _, _ in rows] + [PAD_INDEX] * pad,
                                 np.int32),
        "mask": np.arange(batch_size) < len(rows),
    }

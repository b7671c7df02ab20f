"""SciFact benchmark on 2 CPU cores: `dgi benchmark --dataset scifact ...`.

Text search: scientific claims -> abstracts (5,183). 919 labelled training pairs are too
few to train an encoder from scratch, so the converter adds one inverse-cloze pseudo-query
(an abstract sentence) per document; BM25 needs no training.
"""

import ml_collections

from dgi_jax import config_files


def get_config(encoder: str = "minilm") -> ml_collections.ConfigDict:
  """Returns the locked SciFact benchmark config on `encoder` (`configs/benchmark.py`:
  'minilm', 'scratch' or 't5', e.g. `--config configs/benchmark_scifact.py:scratch`)."""
  c = config_files.load("benchmark", encoder)
  with c.unlocked():
    c.data.max_item_len = 96  # Title and the first sentences of the abstract.
    c.data.max_query_len = 32  # A claim; there is no history.
    c.data.max_history = 0
    c.train.num_steps = 300
    c.benchmark.converter_options = ml_collections.ConfigDict(
        {"pseudo_queries_per_doc": 1})
    c.benchmark.reference = "BEIR (Thakur et al. 2021) BM25 on SciFact test: nDCG@10 .665."
  c.lock()
  return c

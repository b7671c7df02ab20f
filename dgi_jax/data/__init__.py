"""Data: the generic JSONL format, the built-in synthetic catalogue, TFDS builders,
the tokenizer and the grain input pipelines.

Modules (import what you need; `dataset.prepare_dataset` is the entry point):
  records              in-memory Item / Request / RawDataset
  jsonl_format         read, validate and write the generic JSONL format
  synthetic_catalogue  the built-in synthetic e-commerce dataset
  builders/            TFDS builders `dgi_jsonl` and `dgi_synthetic`
  dataset              prepare_dataset -> Dataset (catalogue + random-access splits)
  tokenizer            WordPiece tokenizer, item and request token layouts
  pipeline             training iterator (sharded, checkpointable) and evaluation batches
"""

"""PyTorch reference of the DGI model, weight converters and the JAX/PyTorch parity check.

Nothing here is imported by the core package, and this `__init__` imports nothing, so
`dgi_jax` works without PyTorch installed. Modules:

- `torch_model`: the reference model (`DGIReference`), written from the model
  specification in `docs/DESIGN.md`, not from the Flax code; with a pre-trained encoder
  (`model.encoder` 'bert' / 't5') its encoder is `transformers`' own `BertModel` /
  `T5EncoderModel`.
- `torch_losses`: the five DGI losses and their weighted total, in PyTorch.
- `convert`: Flax params <-> PyTorch `state_dict` (exact in both directions; a pre-trained
  encoder's part through the Hugging Face names of `models.pretrained.param_map`).
- `compare`: `run_parity(config)` runs both models on one batch for every ablation
  combination and tabulates the differences; `format_table(rows)` prints them. With
  `data.history_repr` 'codes' / 'embedding' the batch carries request histories and a
  history table, read by both models.
- `training`: `train_parity(config)` trains both from one init with the project's
  optimizer (replicated in PyTorch by `ReferenceOptimizer`) and returns the per-step losses.
"""

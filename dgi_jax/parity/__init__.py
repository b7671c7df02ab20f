"""PyTorch reference of the DGI model, weight converters and the JAX/PyTorch parity check.

Nothing here is imported by the core package, and this `__init__` imports nothing, so
`dgi_jax` works without PyTorch installed. Modules:

- `torch_model`: the reference model (`DGIReference`), written from the model
  specification in `docs/DESIGN.md`, not from the Flax code.
- `torch_losses`: the five DGI losses and their weighted total, in PyTorch.
- `convert`: Flax params <-> PyTorch `state_dict` (exact in both directions).
- `compare`: `run_parity(config)` runs both models on one batch for every ablation
  combination and tabulates the differences; `format_table(rows)` prints them.
- `training`: `train_parity(config)` trains both from one init with the project's
  optimizer (replicated in PyTorch by `ReferenceOptimizer`) and returns the per-step losses.
"""

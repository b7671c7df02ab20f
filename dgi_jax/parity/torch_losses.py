"""The DGI losses in PyTorch (reference for `dgi_jax/losses.py`).

Each term follows the "Losses" paragraph of the model specification in `docs/DESIGN.md`
and is averaged over the batch it is given. Stop-gradients are `Tensor.detach()`.
"""

from typing import Dict, Mapping, Sequence

import torch
import torch.nn.functional as F

# Loss term names, in the order they are reported; `total` is their weighted sum.
TERMS = ("ntp", "global", "local", "infonce", "div")


def normalize(x: torch.Tensor) -> torch.Tensor:
  """`x / sqrt(sum(x**2, -1) + 1e-12)`: the spec's l2 normalisation (finite at x = 0)."""
  return x / torch.sqrt(torch.sum(x * x, dim=-1, keepdim=True) + 1e-12)


def ntp_loss(logits: Sequence[torch.Tensor], codes: Sequence[torch.Tensor]) -> torch.Tensor:
  """`mean_b sum_t CE(l_t[b], c_t[b])`; logits `[B, K_t]`, codes `[B]` (long)."""
  return sum(F.cross_entropy(l, c, reduction="mean") for l, c in zip(logits, codes))


def global_loss(z_base: torch.Tensor, code_vectors: Sequence[torch.Tensor],
                geometry: str) -> torch.Tensor:
  """Reconstruction of `z_base` by the sum of the code vectors.

  Args:
    z_base: `[B, d]` pooled item embeddings.
    code_vectors: per level `[B, d]`, the quantizer's `zt_t`.
    geometry: 'cosine' (`1 - cos`) or 'dot' (squared error summed over `d`).

  Returns:
    Scalar, averaged over the batch.
  """
  recon = sum(code_vectors)
  if geometry == "cosine":
    cos = torch.sum(normalize(z_base) * normalize(recon), dim=-1)
    return torch.mean(1.0 - cos)
  return torch.mean(torch.sum((z_base - recon) ** 2, dim=-1))


def local_loss(residuals: Sequence[torch.Tensor], hard_codewords: Sequence[torch.Tensor],
               beta: float) -> torch.Tensor:
  """`mean_b sum_t ||sg(r_{t-1}) - e_t||^2 + beta ||r_{t-1} - sg(e_t)||^2`.

  Args:
    residuals: per level `[B, d]`, the residual `r_{t-1}` the level quantizes.
    hard_codewords: per level `[B, d]`, `W_t[c_t]` (raw codewords).
    beta: commitment weight.

  Returns:
    Scalar, averaged over the batch.
  """
  per_example = 0.0
  for r, e in zip(residuals, hard_codewords):
    codebook_term = torch.sum((r.detach() - e) ** 2, dim=-1)
    commit_term = torch.sum((r - e.detach()) ** 2, dim=-1)
    per_example = per_example + codebook_term + beta * commit_term
  return torch.mean(per_example)


def infonce_loss(z_q: torch.Tensor, z_base: torch.Tensor, item_index: torch.Tensor,
                 temperature: float) -> torch.Tensor:
  """In-batch query -> item contrastive loss.

  Off-diagonal entries whose target item equals the row's are excluded (logit -inf):
  a duplicate target in the batch is the same item, not a negative.

  Args:
    z_q: `[B, d]` pooled request embeddings.
    z_base: `[B, d]` pooled item embeddings (row i is request i's target).
    item_index: `[B]` item ids of the targets.
    temperature: tau_CL.

  Returns:
    Scalar, `mean_i CE(S[i], i)`.
  """
  sims = normalize(z_q) @ normalize(z_base).T / temperature
  same = item_index[:, None] == item_index[None, :]
  eye = torch.eye(sims.shape[0], dtype=torch.bool, device=sims.device)
  sims = sims.masked_fill(same & ~eye, float("-inf"))
  labels = torch.arange(sims.shape[0], device=sims.device)
  return F.cross_entropy(sims, labels, reduction="mean")


def div_loss(probs: Sequence[torch.Tensor], eps: float) -> torch.Tensor:
  """`sum_t sum_k pbar log(pbar + eps)` with `pbar_t` the batch mean of `p_t` `[B, K_t]`."""
  total = 0.0
  for p in probs:
    pbar = torch.mean(p, dim=0)
    total = total + torch.sum(pbar * torch.log(pbar + eps))
  return total


def total_loss(terms: Mapping[str, torch.Tensor], weights: Mapping[str, float]) -> torch.Tensor:
  """`sum_name weights[name] * terms[name]` over `TERMS`."""
  return sum(weights[name] * terms[name] for name in TERMS)


def loss_weights(loss_config) -> Dict[str, float]:
  """Reads the five weights from the `loss` section of the config."""
  return {name: float(loss_config[f"{name}_weight"]) for name in TERMS}

"""The five DGI losses as pure functions (DGI_METHOD.md "Losses", docs/DESIGN.md).

Each term is a mean over the batch. The two batch-level terms (InfoNCE's in-batch negatives
and the diversity loss's code usage) need the whole global batch: under `jax.jit` with a
sharded batch that is automatic; under `jax.pmap` the caller passes `gather`, which
all-gathers a per-device array along the device axis.
"""

from typing import Callable, Dict, Sequence

import jax
import jax.numpy as jnp
import optax

from dgi_jax.models.quantizer import l2_normalize

Gather = Callable[[jax.Array], jax.Array]

DIV_PROBS = ("clean", "gumbel")


def identity_gather(x):
  """The gather of a batch that is already global."""
  return x


def ntp_loss(logits: Sequence[jax.Array], codes: Sequence[jax.Array]) -> jax.Array:
  """Cross-entropy of the hard codes under the decoder logits, summed over levels."""
  per_level = [optax.softmax_cross_entropy_with_integer_labels(l.astype(jnp.float32), c)
               for l, c in zip(logits, codes)]
  return jnp.mean(sum(per_level))


def global_loss(z_base: jax.Array, code_vectors: Sequence[jax.Array],
                geometry: str) -> jax.Array:
  """Reconstruction of `z_base` by the sum of code vectors: 1 - cos (cosine) or MSE (dot)."""
  reconstruction = sum(code_vectors)
  if geometry == "cosine":
    cos = jnp.sum(l2_normalize(z_base) * l2_normalize(reconstruction), axis=-1)
    return jnp.mean(1.0 - cos)
  return jnp.mean(jnp.sum(jnp.square(z_base - reconstruction), axis=-1))


def local_loss(residuals: Sequence[jax.Array], hard_codewords: Sequence[jax.Array],
               beta: float) -> jax.Array:
  """`sum_t ||sg(r_{t-1}) - e_{c_t}||^2 + beta ||r_{t-1} - sg(e_{c_t})||^2` (RQ-VAE style)."""
  sg = jax.lax.stop_gradient
  total = 0.0
  for r, e in zip(residuals, hard_codewords):
    codebook_term = jnp.sum(jnp.square(sg(r) - e), axis=-1)
    commitment_term = jnp.sum(jnp.square(r - sg(e)), axis=-1)
    total = total + codebook_term + beta * commitment_term
  return jnp.mean(total)


def infonce_loss(z_q: jax.Array, z_base: jax.Array, item_index: jax.Array,
                 temperature: float, gather: Gather = identity_gather,
                 row_offset: jax.Array | int = 0) -> jax.Array:
  """In-batch contrastive loss, request -> item, over the global batch.

  Args:
    z_q, z_base: [b, d] local request and item embeddings.
    item_index: [b] catalogue index of each row's target; other rows with the same target
      are not counted as negatives.
    temperature: tau_CL.
    gather: all-gathers [b, ...] -> [B, ...] (identity when b is already the global batch).
    row_offset: position of the local rows inside the gathered batch.
  """
  keys = l2_normalize(gather(z_base))
  key_items = gather(item_index)
  sims = l2_normalize(z_q) @ keys.T / temperature
  labels = row_offset + jnp.arange(z_q.shape[0])
  is_label = labels[:, None] == jnp.arange(keys.shape[0])[None, :]
  duplicate = (item_index[:, None] == key_items[None, :]) & ~is_label
  sims = jnp.where(duplicate, -jnp.inf, sims)
  return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(sims, labels))


def diversity_loss(probs: Sequence[jax.Array], eps: float,
                   gather: Gather = identity_gather) -> jax.Array:
  """Negative entropy of the batch-mean code usage, summed over levels."""
  total = 0.0
  for p in probs:
    usage = jnp.mean(gather(p), axis=0)
    total = total + jnp.sum(usage * jnp.log(usage + eps))
  return total


def diversity_assignments(outputs: Dict, loss_config) -> Sequence[jax.Array]:
  """Per-level soft assignments [B, K_t] whose batch mean is L_Div's code usage.

  `loss.div_probs='gumbel'`: the Gumbel-softmax p. 'clean': softmax(s / T) of the
  noise-free scores, T = `loss.div_temperature`, or the Gumbel temperature tau when that
  is 0. With s = gamma * cos the gradient grows as gamma / T: annealed to tau = 0.1 it
  outweighs every other term and drives the encoder (measured in docs/DESIGN.md).
  """
  if loss_config.div_probs not in DIV_PROBS:
    raise ValueError(f"loss.div_probs={loss_config.div_probs!r}; expected one of {DIV_PROBS}")
  if loss_config.div_probs == "gumbel":
    return outputs["probs"]
  if loss_config.div_temperature > 0:
    return [jax.nn.softmax(s / loss_config.div_temperature, axis=-1) for s in outputs["scores"]]
  return outputs["usage"]


def dgi_losses(outputs: Dict, item_index: jax.Array, loss_config, geometry: str,
               gather: Gather = identity_gather, row_offset=0) -> Dict[str, jax.Array]:
  """All terms and their weighted `total` from `DGIModel.forward_from_item_embedding`."""
  terms = {
      "ntp": ntp_loss(outputs["logits"], outputs["codes"]),
      "global": global_loss(outputs["z_base"], outputs["code_vectors"], geometry),
      "local": local_loss(outputs["residuals"], outputs["hard_codewords"], loss_config.beta),
      "infonce": infonce_loss(outputs["z_q"], outputs["z_base"], item_index,
                              loss_config.infonce_temperature, gather, row_offset),
      "div": diversity_loss(diversity_assignments(outputs, loss_config),
                            loss_config.div_eps, gather),
  }
  terms["total"] = sum(loss_config[f"{name}_weight"] * value for name, value in terms.items())
  return terms

"""Residual quantizer as pure functions of the codebooks (the model owns the parameters).

Training uses soft (Gumbel-softmax) code vectors so the retrieval loss reaches the item
encoder; inference uses hard codes and hard residuals.
"""

from typing import List, NamedTuple, Sequence

import jax
import jax.numpy as jnp

NORM_EPS = 1e-12


def l2_normalize(x: jax.Array) -> jax.Array:
  """`x / sqrt(sum(x**2) + 1e-12)` along the last axis."""
  return x * jax.lax.rsqrt(jnp.sum(x * x, axis=-1, keepdims=True) + NORM_EPS)


def similarity(x: jax.Array, codewords: jax.Array, gamma, geometry: str) -> jax.Array:
  """Logits of `x [..., d]` against `codewords [K, d]`: scaled cosine or plain dot product."""
  x = x.astype(jnp.float32)
  codewords = codewords.astype(jnp.float32)
  if geometry == "cosine":
    return gamma * l2_normalize(x) @ l2_normalize(codewords).T
  return x @ codewords.T


class SoftQuantization(NamedTuple):
  """Per-level outputs of the training-time quantizer (lists of length m)."""
  scores: List[jax.Array]  # [B, K_t] noise-free logits s_t.
  codes: List[jax.Array]  # [B] int32 hard codes c_t = argmax s_t (the NTP targets).
  probs: List[jax.Array]  # [B, K_t] Gumbel-softmax assignment p_t.
  usage: List[jax.Array]  # [B, K_t] noise-free softmax(s_t / tau) (for the diversity loss).
  code_vectors: List[jax.Array]  # [B, d] zt_t fed to the decoder.
  residuals: List[jax.Array]  # [B, d] r_{t-1}, the residual each level quantizes.
  hard_codewords: List[jax.Array]  # [B, d] W_t[c_t].


def soft_quantize(z_base: jax.Array, codebooks: Sequence[jax.Array], gamma,
                  gumbel_noise: Sequence[jax.Array], tau, geometry: str,
                  grad_path: str) -> SoftQuantization:
  """Training forward of the residual quantizer (DGI_METHOD.md, "Training forward pass").

  Args:
    z_base: [B, d] item embeddings.
    codebooks: raw codebook weights, one [K_t, d] array per level.
    gamma: scalar scale of the cosine scores.
    gumbel_noise: one [B, K_t] Gumbel(0, 1) sample per level (an input so two frameworks
      can be fed the same noise).
    tau: Gumbel-softmax temperature.
    geometry: 'cosine' or 'dot'.
    grad_path: 'gumbel_soft' | 'frozen' (soft vectors), 'ste' (straight-through of the hard
      codeword), 'gumbel_st' (straight-through Gumbel one-hot).
  """
  out = SoftQuantization([], [], [], [], [], [], [])
  residual = z_base.astype(jnp.float32)
  for codebook, noise in zip(codebooks, gumbel_noise):
    codebook = codebook.astype(jnp.float32)
    scores = similarity(residual, codebook, gamma, geometry)
    codes = jnp.argmax(scores, axis=-1).astype(jnp.int32)
    probs = jax.nn.softmax((scores + noise) / tau, axis=-1)
    hard = codebook[codes]
    if grad_path in ("gumbel_soft", "frozen"):
      vector = probs @ codebook
    elif grad_path == "ste":
      vector = residual + jax.lax.stop_gradient(hard - residual)
    elif grad_path == "gumbel_st":
      one_hot = jax.nn.one_hot(jnp.argmax(scores + noise, axis=-1), codebook.shape[0])
      vector = (one_hot + probs - jax.lax.stop_gradient(probs)) @ codebook
    else:
      raise ValueError(f"unknown grad_path {grad_path!r}")
    usage = jax.nn.softmax(scores / tau, axis=-1)
    for field, value in zip(out, (scores, codes, probs, usage, vector, residual, hard)):
      field.append(value)
    residual = residual - vector
  return out


def hard_quantize(z: jax.Array, codebooks: Sequence[jax.Array], gamma,
                  geometry: str) -> jax.Array:
  """Inference quantizer: `c_t = argmax s_t`, residual minus the hard codeword. -> [B, m]."""
  residual = z.astype(jnp.float32)
  codes = []
  for codebook in codebooks:
    codebook = codebook.astype(jnp.float32)
    c = jnp.argmax(similarity(residual, codebook, gamma, geometry), axis=-1)
    codes.append(c.astype(jnp.int32))
    residual = residual - codebook[c]
  return jnp.stack(codes, axis=-1)

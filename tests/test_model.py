"""DGI model: shapes, one codebook owner, gradient paths, soft -> hard limit."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dgi_jax import losses
from dgi_jax.models import quantizer
from dgi_jax.models.dgi import DGIModel
from model_fixtures import gumbel, init, random_batch, small_model


def test_output_shapes():
  model = small_model()
  batch = random_batch()
  params = init(model, batch)
  out = model.apply({"params": params}, batch["item_tokens"], batch["query_tokens"],
                    gumbel(model, 6), 0.5)
  assert out["z_base"].shape == out["z_q"].shape == (6, 16)
  assert [l.shape for l in out["logits"]] == [(6, 5), (6, 4), (6, 3)]
  assert [c.shape for c in out["codes"]] == [(6,)] * 3
  assert [v.shape for v in out["code_vectors"]] == [(6, 16)] * 3
  for probs in out["probs"]:
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-6)


def test_item_embedding_does_not_depend_on_padding_width():
  # `pipeline.encode_catalogue` drops the columns that are padding in every item.
  model = small_model()
  batch = random_batch()  # Items of 8 tokens, the last two padding.
  params = init(model, batch)
  embed = lambda tokens: model.apply({"params": params}, tokens, method=DGIModel.embed_items)
  wide = np.pad(batch["item_tokens"], ((0, 0), (0, 4)))
  trimmed = batch["item_tokens"][:, :6]
  np.testing.assert_allclose(embed(wide), embed(trimmed), rtol=1e-5, atol=1e-6)
  changed = trimmed.copy()
  changed[:, -1] = 1  # A token, not padding, must change the embedding.
  assert np.abs(embed(changed) - embed(trimmed)).max() > 1e-3


def _codebook_shaped_arrays(params, sizes, d):
  shapes = {(k, d) for k in sizes}
  return [x for x in jax.tree.leaves(params) if x.shape in shapes]


def test_tied_heads_hold_exactly_one_codebook_copy():
  model = small_model(codebook_sizes=(7, 6, 9))
  params = init(model, random_batch())
  top = sorted(k for k in params if k.startswith(("codebook", "head")))
  assert top == ["codebook_0", "codebook_1", "codebook_2"]
  assert len(_codebook_shaped_arrays(params, (7, 6, 9), 16)) == 3
  untied = init(small_model(codebook_sizes=(7, 6, 9), tie_heads=False), random_batch())
  assert len(_codebook_shaped_arrays(untied, (7, 6, 9), 16)) == 6


def test_tied_heads_are_the_codebooks():
  """Changing a codebook changes the decoder logits of that level (one shared array)."""
  model = small_model()
  batch = random_batch()
  params = init(model, batch)
  # Not a constant vector: the decoder's LayerNorm maps those to zero.
  z_q = jax.random.normal(jax.random.PRNGKey(5), (6, 16))
  h_q = jnp.ones((6, 12, 16))
  logits = lambda p: model.apply({"params": p}, z_q, h_q, batch["query_tokens"] != 0,  # noqa
                                 jnp.zeros((6, 0), jnp.int32), method=DGIModel.prefix_logits)
  before = logits(params)
  changed = dict(params, codebook_0=params["codebook_0"].at[2].multiply(-1.0))
  after = logits(changed)
  assert not np.allclose(before[:, 2], after[:, 2])
  np.testing.assert_allclose(np.delete(before, 2, 1), np.delete(after, 2, 1), rtol=1e-6)


def _ntp_grad_wrt_item_embedding(grad_path):
  model = small_model(grad_path=grad_path)
  batch = random_batch()
  params = init(model, batch)
  noise = gumbel(model, 6)
  z_base = model.apply({"params": params}, batch["item_tokens"],
                       method=DGIModel.embed_items)

  def ntp(z):
    out = model.apply({"params": params}, z, batch["query_tokens"], noise, 0.7,
                      method=DGIModel.forward_from_item_embedding)
    return losses.ntp_loss(out["logits"], out["codes"])
  return jax.grad(ntp)(z_base)


@pytest.mark.parametrize("grad_path", ["gumbel_soft", "ste", "gumbel_st"])
def test_ntp_gradient_reaches_item_encoder(grad_path):
  assert float(jnp.abs(_ntp_grad_wrt_item_embedding(grad_path)).max()) > 1e-4


def test_frozen_path_gives_zero_ntp_gradient_at_item_encoder():
  np.testing.assert_array_equal(_ntp_grad_wrt_item_embedding("frozen"), 0.0)


def test_ste_gradient_is_identity():
  codebook = jax.random.normal(jax.random.PRNGKey(0), (5, 4))
  r = jax.random.normal(jax.random.PRNGKey(1), (1, 4))
  noise = [jnp.zeros((1, 5))]

  def code_vector(residual):
    quant = quantizer.soft_quantize(residual, [codebook], 30.0, noise, 1.0, "cosine", "ste")
    return quant.code_vectors[0][0]
  jacobian = jax.jacobian(code_vector)(r)[:, 0, :]
  np.testing.assert_allclose(jacobian, np.eye(4), atol=1e-7)
  # And its value is the hard codeword.
  hard = codebook[jnp.argmax(quantizer.similarity(r, codebook, 30.0, "cosine"), -1)]
  np.testing.assert_allclose(code_vector(r), hard[0], rtol=1e-6)


def test_soft_vectors_approach_hard_codewords_as_tau_goes_to_zero():
  codebooks = [jax.random.normal(jax.random.PRNGKey(i), (6, 8)) for i in range(3)]
  z = jax.random.normal(jax.random.PRNGKey(9), (10, 8))
  noise = [jnp.zeros((10, 6))] * 3
  gaps = []
  for tau in (1.0, 0.1, 0.01, 0.001):
    quant = quantizer.soft_quantize(z, codebooks, 30.0, noise, tau, "cosine", "gumbel_soft")
    gaps.append(max(float(jnp.abs(v - h).max())
                    for v, h in zip(quant.code_vectors, quant.hard_codewords)))
  assert gaps == sorted(gaps, reverse=True)
  assert gaps[-1] < 1e-4 < gaps[0]
  # At tau -> 0 the soft chain equals the inference quantizer's codes.
  hard = quantizer.hard_quantize(z, codebooks, 30.0, "cosine")
  np.testing.assert_array_equal(jnp.stack(quant.codes, -1), hard)


def test_gumbel_st_forward_is_one_hot_of_noisy_argmax():
  codebook = jax.random.normal(jax.random.PRNGKey(0), (5, 4))
  r = jax.random.normal(jax.random.PRNGKey(1), (3, 4))
  noise = [jax.random.gumbel(jax.random.PRNGKey(2), (3, 5))]
  quant = quantizer.soft_quantize(r, [codebook], 30.0, noise, 0.5, "cosine", "gumbel_st")
  noisy = jnp.argmax(quantizer.similarity(r, codebook, 30.0, "cosine") + noise[0], -1)
  np.testing.assert_allclose(quant.code_vectors[0], codebook[noisy], rtol=1e-6)


def test_prefix_logits_match_training_decoder_on_hard_inputs():
  """Inference logits equal the decoder's logits when fed the same hard codewords."""
  model = small_model()
  batch = random_batch()
  params = init(model, batch)
  h_q, z_q, mask = model.apply({"params": params}, batch["query_tokens"],
                               method=DGIModel.encode_requests)
  codes = jnp.array([[1, 2], [0, 3], [4, 0], [2, 2], [3, 1], [0, 0]], jnp.int32)
  vectors = jnp.stack([params["codebook_0"][codes[:, 0]], params["codebook_1"][codes[:, 1]]], 1)
  full = model.apply({"params": params}, z_q, h_q, mask, vectors,
                     method=DGIModel.decode)
  for t in range(3):
    step = model.apply({"params": params}, z_q, h_q, mask, codes[:, :t],
                       method=DGIModel.prefix_logits)
    np.testing.assert_allclose(step, full[t], rtol=1e-5, atol=1e-5)


def test_sid_log_probs_are_the_prefix_logits_log_softmax_at_every_level():
  """One causal pass over whole SIDs gives each level's log P(c_t | request, c_<t) that
  `prefix_logits` gives at that prefix length, for G SIDs per request."""
  model = small_model()
  batch = random_batch()
  params = init(model, batch)
  apply = functools.partial(model.apply, {"params": params})
  h_q, z_q, mask = apply(batch["query_tokens"], method=DGIModel.encode_requests)
  rng = np.random.default_rng(0)
  sizes = model.cfg.codebook_sizes
  sids = jnp.asarray(np.stack([rng.integers(0, k, (6, 4)) for k in sizes], -1), jnp.int32)
  log_probs = apply(z_q, h_q, mask, sids, method=DGIModel.sid_log_probs)  # [6, 4, m]
  assert log_probs.shape == (6, 4, len(sizes))
  for t in range(len(sizes)):
    logits = apply(z_q, h_q, mask, sids[..., :t], method=DGIModel.prefix_logits)
    expected = np.take_along_axis(np.asarray(jax.nn.log_softmax(logits)),
                                  np.asarray(sids[..., t:t + 1]), axis=-1)[..., 0]
    np.testing.assert_allclose(log_probs[..., t], expected, rtol=1e-5, atol=1e-5)
  assert np.all(np.asarray(log_probs) < 0)


@pytest.mark.parametrize("geometry", ["cosine", "dot"])
def test_scores_geometry(geometry):
  x = jnp.array([[3.0, 4.0]])
  w = jnp.array([[1.0, 0.0], [0.0, 2.0]])
  s = quantizer.similarity(x, w, 10.0, geometry)
  expected = [[6.0, 8.0]] if geometry == "cosine" else [[3.0, 8.0]]
  np.testing.assert_allclose(s, expected, rtol=1e-6)


def test_usage_is_noise_free_softmax_of_scores_over_tau():
  codebooks = [jax.random.normal(jax.random.PRNGKey(i), (6, 8)) for i in range(2)]
  z = jax.random.normal(jax.random.PRNGKey(9), (5, 8))
  noise = [jax.random.gumbel(jax.random.PRNGKey(3 + i), (5, 6)) for i in range(2)]
  # gamma 2: scores within the Gumbel noise's scale, so the noise visibly moves p.
  quant = quantizer.soft_quantize(z, codebooks, 2.0, noise, 0.4, "cosine", "gumbel_soft")
  for scores, usage, probs in zip(quant.scores, quant.usage, quant.probs):
    np.testing.assert_allclose(usage, jax.nn.softmax(scores / 0.4, -1), rtol=1e-6)
    assert not np.allclose(usage, probs, atol=1e-3)  # The noise changes p, not the usage.


@pytest.mark.parametrize("normalize", [True, False])
def test_item_embedding_is_unit_length_when_normalized(normalize):
  model = small_model(normalize_item_embedding=normalize)
  batch = random_batch()
  params = init(model, batch)
  z_base = model.apply({"params": params}, batch["item_tokens"], method=DGIModel.embed_items)
  pooled = model.apply({"params": params}, batch["item_tokens"],
                       method=lambda m, t: m.item_encoder(t)[1])
  norms = np.linalg.norm(np.asarray(z_base), axis=-1)
  if normalize:
    np.testing.assert_allclose(norms, 1.0, rtol=1e-5)
    np.testing.assert_allclose(z_base, pooled / np.linalg.norm(pooled, axis=-1,
                                                              keepdims=True), rtol=1e-5)
  else:
    np.testing.assert_array_equal(z_base, pooled)
    assert norms.min() > 2.0  # LayerNorm'd states: norm ~ sqrt(d).


def test_weight_decay_applies_to_matrices_not_to_biases_scales_or_gammas():
  from dgi_jax import optim  # pylint: disable=g-import-not-at-top
  params = init(small_model(), random_batch())
  mask = optim.decay_mask(params)
  flat = {"/".join(str(getattr(k, "key", k)) for k in path): (leaf, p.ndim)
          for (path, leaf), p in zip(jax.tree_util.tree_leaves_with_path(mask),
                                     jax.tree.leaves(params))}
  qkv_biases = [n for n in flat if n.endswith("bias") and flat[n][1] == 2]
  assert qkv_biases  # Attention's [heads, head_dim] biases exist ...
  for name, (decays, ndim) in flat.items():  # ... and are not decayed.
    assert decays == (ndim >= 2 and not name.endswith("bias")), name
  assert flat["codebook_0"][0] and not flat["gamma_quantizer"][0]


@pytest.mark.parametrize("mode,sign", [("sum", 1.0), ("residual", -1.0)])
def test_teacher_forcing_inputs(mode, sign):
  from dgi_jax.models.dgi import teacher_forcing_inputs  # pylint: disable=g-import-not-at-top
  z_q = jnp.array([[1.0, 2.0]])
  prefix = jnp.array([[[0.5, 0.0], [0.0, 3.0]]])
  x = teacher_forcing_inputs(z_q, prefix, mode)
  expected = [[1.0, 2.0], [1.0 + sign * 0.5, 2.0], [1.0 + sign * 0.5, 2.0 + sign * 3.0]]
  np.testing.assert_allclose(x[0], expected)


def _layer_norm(x):
  x = np.asarray(x, np.float64)
  centred = x - x.mean(-1, keepdims=True)
  return centred / np.sqrt((centred ** 2).mean(-1, keepdims=True) + 1e-6)


def test_untrained_identity_decoder_scores_the_requests_residuals():
  """Identity init + residual inputs: level t's logits are gamma_d * cos(LN(r_t), C_t)
  with r_t = z_q / |z_q| - (hard codewords of the prefix), whatever the request tokens."""
  model = small_model(decoder_inputs="residual", decoder_identity_init=True)
  batch = random_batch()
  params = init(model, batch)
  apply = lambda *a, **k: model.apply({"params": params}, *a, **k)  # noqa: E731
  states, z_q, mask = apply(batch["query_tokens"], method=DGIModel.encode_requests)
  prefix = jnp.array([[1, 2]] * len(z_q), jnp.int32)
  codebooks = [np.asarray(params[f"codebook_{t}"], np.float64) for t in range(3)]
  r = np.asarray(z_q, np.float64)
  r = r / np.linalg.norm(r, axis=-1, keepdims=True)
  for t in range(3):
    logits = apply(z_q, states, mask, prefix[:, :t],
                   method=DGIModel.prefix_logits)
    h = _layer_norm(r)
    c = codebooks[t] / np.linalg.norm(codebooks[t], axis=-1, keepdims=True)
    expected = float(params["gamma_decoder"]) * (h / np.linalg.norm(h, axis=-1,
                                                                    keepdims=True)) @ c.T
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4)
    if t < 2:
      r = r - codebooks[t][prefix[0, t]]


def test_identity_init_decoder_still_learns():
  """Zero output projections pass gradient: every decoder branch's output kernel gets a
  non-zero NTP gradient at step 0 (its inner weights start to learn one step later)."""
  model = small_model(decoder_identity_init=True)
  batch = random_batch()
  params = init(model, batch)
  weights = {k: v for k, v in jax.tree_util.tree_flatten_with_path(params["decoder"])[0]
             if k[-1].key in ("kernel", "level_embed")}  # Biases start at zero anyway.
  zero = [k for k, v in weights.items() if not np.any(np.asarray(v))]
  assert len(zero) == 3 + 1  # self_attn/out, cross_attn/out, mlp/wo kernels + level_embed.

  def ntp(p):
    out = model.apply({"params": p}, batch["item_tokens"], batch["query_tokens"],
                      gumbel(model, 6), 0.5)
    return losses.ntp_loss(out["logits"], out["codes"])
  grads = dict(jax.tree_util.tree_flatten_with_path(jax.grad(ntp)(params)["decoder"])[0])
  for key in zero:
    assert np.abs(np.asarray(grads[key])).max() > 1e-6, jax.tree_util.keystr(key)

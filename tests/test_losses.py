"""Each DGI loss against a value computed by hand (numpy, written out term by term)."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from conftest import load_config
from dgi_jax import losses


def _loss_config(**fields):
  """The default config's loss section with `fields` set."""
  config = load_config("default").loss
  config.update(fields)
  return config


def test_ntp_loss_hand_computed():
  logits = [jnp.array([[2.0, 0.0], [0.0, 0.0]]), jnp.array([[1.0, 1.0, 1.0], [0.0, 3.0, 0.0]])]
  codes = [jnp.array([0, 1]), jnp.array([2, 1])]
  # Row 0: -log(e^2/(e^2+1)) + log 3; row 1: log 2 + -log(e^3/(e^3+2)).
  row0 = -math.log(math.exp(2) / (math.exp(2) + 1)) + math.log(3)
  row1 = math.log(2) - math.log(math.exp(3) / (math.exp(3) + 2))
  assert float(losses.ntp_loss(logits, codes)) == pytest.approx((row0 + row1) / 2, rel=1e-6)


def test_global_loss_cosine_and_mse():
  z = jnp.array([[1.0, 0.0], [0.0, 2.0]])
  vectors = [jnp.array([[1.0, 1.0], [0.0, 1.0]]), jnp.array([[0.0, 0.0], [0.0, -2.0]])]
  # Row 0: sum (1, 1), cos = 1/sqrt2. Row 1: sum (0, -1), cos = -1.
  expected = ((1 - 1 / math.sqrt(2)) + 2.0) / 2
  assert float(losses.global_loss(z, vectors, "cosine")) == pytest.approx(expected, rel=1e-6)
  # MSE: row 0 ||(0, -1)||^2 = 1; row 1 ||(0, 3)||^2 = 9.
  assert float(losses.global_loss(z, vectors, "dot")) == pytest.approx(5.0, rel=1e-6)


def test_local_loss_hand_computed():
  residuals = [jnp.array([[1.0, 2.0]]), jnp.array([[0.5, 0.0]])]
  hard = [jnp.array([[0.0, 2.0]]), jnp.array([[0.5, 1.0]])]
  # Level 1: ||(1, 0)||^2 (1 + 0.25); level 2: ||(0, -1)||^2 (1 + 0.25).
  assert float(losses.local_loss(residuals, hard, beta=0.25)) == pytest.approx(2.5, rel=1e-6)


def test_local_loss_gradients_split_by_stop_gradient():
  import jax
  r, e = jnp.array([[1.0, 2.0]]), jnp.array([[0.0, 0.0]])
  g_r, g_e = jax.grad(lambda r, e: losses.local_loss([r], [e], 0.25), argnums=(0, 1))(r, e)
  np.testing.assert_allclose(g_r, 0.25 * 2 * (r - e), rtol=1e-6)  # commitment only
  np.testing.assert_allclose(g_e, 2 * (e - r), rtol=1e-6)  # codebook term only


def test_infonce_hand_computed_with_duplicate_target_masked():
  z_q = jnp.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
  z_item = jnp.array([[2.0, 0.0], [0.0, 3.0], [1.0, 0.0]])
  items = jnp.array([7, 8, 7])  # Rows 0 and 2 share a target.
  t = 0.5
  cos = np.array([[1, 0, 1], [0, 1, 0], [1 / math.sqrt(2), 1 / math.sqrt(2), 1 / math.sqrt(2)]])
  logits = cos / t
  def ce(row, label, masked):
    keep = [j for j in range(3) if j == label or j not in masked]
    return -logits[row, label] + math.log(sum(math.exp(logits[row, j]) for j in keep))
  expected = (ce(0, 0, {2}) + ce(1, 1, set()) + ce(2, 2, {0})) / 3
  got = losses.infonce_loss(z_q, z_item, items, t)
  assert float(got) == pytest.approx(expected, rel=1e-6)


def test_diversity_loss_is_negative_entropy_of_mean_usage():
  p = [jnp.array([[1.0, 0.0], [0.0, 1.0]]), jnp.array([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])]
  # Level 1 usage (.5, .5): -log 2. Level 2 usage (1, 0, 0): 0.
  assert float(losses.diversity_loss(p, eps=0.0 + 1e-30)) == pytest.approx(-math.log(2), rel=1e-6)


@pytest.mark.parametrize("div_probs,temperature,key", [
    ("clean", 0.0, "usage"), ("gumbel", 0.0, "probs"), ("gumbel", 2.0, "probs"),
    ("clean", 2.0, "scores")])
def test_diversity_term_reads_the_configured_usage(div_probs, temperature, key):
  cfg = _loss_config(ntp_weight=1.0, global_weight=1.0, local_weight=1.0, infonce_weight=1.0,
                     div_weight=1.0, beta=0.25, infonce_temperature=0.1, div_eps=1e-10,
                     div_probs=div_probs, div_temperature=temperature)
  rs = np.random.RandomState(1)
  b, d, k = 4, 3, 5
  outputs = dict(logits=[jnp.asarray(rs.randn(b, k))], codes=[jnp.asarray(rs.randint(0, k, b))],
                 z_base=jnp.asarray(rs.randn(b, d)), z_q=jnp.asarray(rs.randn(b, d)),
                 code_vectors=[jnp.asarray(rs.randn(b, d))], residuals=[jnp.asarray(rs.randn(b, d))],
                 hard_codewords=[jnp.asarray(rs.randn(b, d))],
                 probs=[jnp.asarray(rs.dirichlet(np.ones(k), b))],
                 usage=[jnp.asarray(np.eye(k)[[0, 0, 0, 1]])],
                 scores=[jnp.asarray(np.log([[4.0, 1, 1, 1, 1]] * b) * 2.0)])
  terms = losses.dgi_losses(outputs, jnp.arange(b), cfg, "cosine")
  if key == "usage":  # Usage (3/4, 1/4): -H = 3/4 log 3/4 + 1/4 log 1/4.
    expected = 0.75 * math.log(0.75) + 0.25 * math.log(0.25)
  elif key == "scores":  # softmax(2 log(4, 1, 1, 1, 1) / 2) = (1/2, 1/8, 1/8, 1/8, 1/8).
    expected = 0.5 * math.log(0.5) + 4 * 0.125 * math.log(0.125)
  else:
    expected = float(losses.diversity_loss(outputs["probs"], 1e-10))
  assert float(terms["div"]) == pytest.approx(expected, rel=1e-5)


def test_unknown_div_probs_is_an_error():
  cfg = _loss_config(div_probs="hard", div_temperature=1.0)
  with pytest.raises(ValueError, match="div_probs"):
    losses.diversity_assignments({}, cfg)


def test_total_is_weighted_sum():
  cfg = _loss_config(ntp_weight=1.0, global_weight=2.0, local_weight=0.5, infonce_weight=0.0,
                     div_weight=3.0, beta=0.25, infonce_temperature=0.1, div_eps=1e-10,
                     div_probs="gumbel", div_temperature=0.0)
  rs = np.random.RandomState(0)
  b, d = 4, 3
  outputs = dict(logits=[jnp.asarray(rs.randn(b, 5))], codes=[jnp.asarray(rs.randint(0, 5, b))],
                 z_base=jnp.asarray(rs.randn(b, d)), z_q=jnp.asarray(rs.randn(b, d)),
                 code_vectors=[jnp.asarray(rs.randn(b, d))], residuals=[jnp.asarray(rs.randn(b, d))],
                 hard_codewords=[jnp.asarray(rs.randn(b, d))],
                 probs=[jnp.asarray(rs.dirichlet(np.ones(5), b))])
  terms = losses.dgi_losses(outputs, jnp.arange(b), cfg, "cosine")
  expected = (terms["ntp"] + 2 * terms["global"] + 0.5 * terms["local"] + 3 * terms["div"])
  assert float(terms["total"]) == pytest.approx(float(expected), rel=1e-6)

"""Data parallelism: 1 device vs 8 simulated devices (jit + sharding) vs pmap."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dgi_jax import optim, sharding
from dgi_jax import train_step as ts
from conftest import load_config
from model_fixtures import init, max_abs_diff, random_batch, small_model

pytestmark = pytest.mark.skipif(jax.device_count() != 8, reason="needs 8 simulated devices")

BATCH = 16
STEPS = 10


@pytest.fixture(scope="module")
def setup():
  config = load_config("tiny")
  model = small_model(codebook_sizes=(6, 5, 4))
  batch = random_batch(BATCH)
  params = init(model, batch)
  return config, model, batch, params


def _rel(a, b):
  """Largest per-leaf |a - b| / max|b| (on the host).

  Leaves that are mathematically zero (attention key biases: softmax ignores a shift)
  hold only rounding noise, so the denominator is floored at 1e-3 of the largest leaf.
  """
  a, b = jax.device_get((a, b))
  leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
  floor = 1e-3 * max(float(np.max(np.abs(y))) for y in leaves_b)
  return max(float(np.max(np.abs(x - y))) / max(float(np.max(np.abs(y))), floor)
             for x, y in zip(leaves_a, leaves_b))


def test_loss_and_grads_equal_on_1_and_8_devices(setup):
  config, model, batch, params = setup
  fn = ts.make_loss_and_grads(model, config, STEPS)
  rng, step = jax.random.PRNGKey(3), jnp.int32(2)
  single = jax.jit(fn)(jax.device_put(params, jax.devices()[0]),
                       jax.device_put(batch, jax.devices()[0]), rng, step)
  mesh = sharding.make_mesh()
  data, rep = sharding.data_sharding(mesh), sharding.replicated(mesh)
  sharded = jax.jit(fn, in_shardings=(rep, data, rep, rep))(
      params, sharding.global_batch(batch, data), rng, step)
  assert sharded[1]["codebook_0"].sharding.is_fully_replicated
  assert _rel(sharded[0], single[0]) < 1e-5
  assert _rel(sharded[1], single[1]) < 1e-5
  assert _rel(sharded[2], single[2]) < 1e-5
  assert float(jnp.abs(single[1]["codebook_0"]).max()) > 0  # Non-trivial gradients.


def test_pmap_grads_equal_single_device(setup):
  config, model, batch, params = setup
  rng, step = jax.random.PRNGKey(3), jnp.int32(2)
  single = jax.jit(ts.make_loss_and_grads(model, config, STEPS))(params, batch, rng, step)
  pmapped = jax.pmap(ts.make_loss_and_grads(model, config, STEPS, axis_name="data"),
                     axis_name="data", in_axes=(0, 0, None, None))(
                         sharding.replicate_for_pmap(params), sharding.pmap_batch(batch),
                         rng, step)
  pmapped = sharding.unreplicate(pmapped)
  for got, want in zip(pmapped, single):
    assert _rel(got, want) < 1e-5


def test_pmap_train_steps_equal_jit_train_steps(setup):
  config, model, batch, params = setup
  optimizer = optim.make_optimizer(config.optim, STEPS)
  state = ts.create_train_state(params, optimizer)
  rng = jax.random.PRNGKey(5)
  mesh = sharding.make_mesh()
  data, rep = sharding.data_sharding(mesh), sharding.replicated(mesh)
  jit_step = jax.jit(ts.make_train_step(model, optimizer, config, STEPS),
                     in_shardings=(rep, data, rep), out_shardings=(rep, rep))
  pmap_step = jax.pmap(ts.make_train_step(model, optimizer, config, STEPS, axis_name="data"),
                       axis_name="data", in_axes=(0, 0, None))
  jit_state, pmap_state = state, sharding.replicate_for_pmap(state)
  for i in range(3):
    b = random_batch(BATCH, seed=i)
    jit_state, jit_metrics = jit_step(jit_state, sharding.global_batch(b, data), rng)
    pmap_state, pmap_metrics = pmap_step(pmap_state, sharding.pmap_batch(b), rng)
    pmap_metrics = sharding.unreplicate(pmap_metrics)
    assert abs(float(jit_metrics["total"]) - float(pmap_metrics["total"])) < 1e-5 * abs(
        float(jit_metrics["total"]))
  # Adam turns rounding-level gradient differences into lr-sized steps on leaves whose
  # true gradient is ~0, so parameters get a looser bound than the losses.
  assert max_abs_diff(jit_state.params, sharding.unreplicate(pmap_state).params) < 1e-4
  assert int(jit_state.step) == 3


def test_gumbel_noise_depends_on_example_not_position():
  rng = jax.random.PRNGKey(0)
  a = ts.gumbel_noise(rng, jnp.array([3, 9]), (4, 5))
  b = ts.gumbel_noise(rng, jnp.array([9, 3, 1]), (4, 5))
  np.testing.assert_array_equal(a[0][0], b[0][1])
  np.testing.assert_array_equal(a[1][1], b[1][0])
  assert not np.array_equal(a[0][0], a[0][1])


def test_unreplicate_reads_the_first_devices_copy_onto_that_device_alone():
  tree = {"w": np.arange(12, dtype=np.float32).reshape(4, 3), "step": np.int32(7)}
  # Device k's copy is the value plus k, so the first device's copy is the value itself.
  per_device = jax.pmap(
      lambda t: jax.tree.map(lambda v: v + jax.lax.axis_index("i").astype(v.dtype), t),
      axis_name="i")(sharding.replicate_for_pmap(tree))
  got = sharding.unreplicate(per_device)
  for name, want in tree.items():
    # One device's buffer, no program over all of them (whose all-reduce per leaf could
    # starve the simulated devices' collectives of threads).
    assert got[name].sharding.device_set == {jax.local_devices()[0]}
    np.testing.assert_array_equal(got[name], want)

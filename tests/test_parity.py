"""Flax model vs the independent PyTorch reference (float32, CPU, 'highest' matmuls).

Forward and backward on one batch for all 16 ablation combinations, a 20-step training
run with the project's optimizer replicated in PyTorch, and exact weight conversion.
Run with `-s` to see the measured maxima.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import jax  # noqa: E402  (after the skip: nothing here is useful without torch)

from dgi_jax.parity import compare, convert, torch_model, training  # noqa: E402
from parity_fixtures import single_torch_thread  # noqa: E402,F401

# One batch size throughout: op-by-op JAX compiles each primitive once per shape.
BATCH = 16


def _tiny():
  from conftest import load_config  # pylint: disable=g-import-not-at-top
  return load_config("tiny")


@pytest.fixture(scope="module")
def parity_rows():
  rows, _ = compare.run_parity(_tiny(), batch_size=BATCH)
  print("\n" + compare.format_table(rows, failures_only=True))
  return rows


def _worst(rows, kind):
  group = [r for r in rows if r.name.split("/")[0] == kind]
  assert group, kind
  worst = max(group, key=lambda r: r.max_rel)
  print(f"\n{kind}: max_rel {worst.max_rel:.3g} max_abs {worst.max_abs:.3g} "
        f"({worst.combo} {worst.name}) over {len(group)} quantities")
  return group, worst


def test_all_sixteen_combinations_compared(parity_rows):
  assert len({r.combo for r in parity_rows}) == 16


@pytest.mark.parametrize("kind", ["loss", "out", "logits"])
def test_losses_and_outputs_within_1e5_relative(parity_rows, kind):
  group, worst = _worst(parity_rows, kind)
  assert worst.max_rel <= 1e-5, [r for r in group if not r.ok]


def test_hard_codes_identical(parity_rows):
  group, _ = _worst(parity_rows, "codes")
  assert all(r.max_abs == 0 for r in group), [r for r in group if not r.ok]


def test_gradients_within_1e4_relative(parity_rows):
  group, worst = _worst(parity_rows, "grad")
  assert worst.max_rel <= 1e-4, [r for r in group if not r.ok]
  # Every parameter of every combination has a gradient row (none silently dropped).
  assert len(group) == sum(
      len(torch_model.DGIReference(torch_model.ReferenceConfig.from_config(
          compare.with_model_overrides(_tiny(), grad_path=g, tie_heads=t, geometry=e))
      ).state_dict()) for g, t, e in compare.COMBINATIONS)


def test_shared_gamma_parity():
  config = compare.with_model_overrides(_tiny(), share_gamma=True)
  rows, ok = compare.run_parity(config, batch_size=BATCH,
                                combinations=[("gumbel_soft", True, "cosine"),
                                              ("ste", False, "cosine")])
  assert ok, compare.format_table(rows, failures_only=True)
  assert any(r.name == "grad/gamma" for r in rows)


def test_sum_decoder_inputs_parity():
  """The paper figure's decoder inputs (z_q + prefix); the table above runs 'residual'."""
  config = compare.with_model_overrides(_tiny(), decoder_inputs="sum")
  rows, ok = compare.run_parity(config, batch_size=BATCH,
                                combinations=[("gumbel_soft", True, "cosine"),
                                              ("frozen", False, "dot")])
  assert ok, compare.format_table(rows, failures_only=True)


@pytest.mark.parametrize("decoder_lr", [0.0, 3e-3])
def test_training_run_within_1e4_relative_every_step(decoder_lr):
  config = _tiny()
  with config.unlocked():
    config.optim.decoder_lr = decoder_lr  # 3e-3: the decoder in a third group.
  jax_terms, torch_terms = training.train_parity(config, steps=20, batch_size=BATCH)
  rel = [abs(j["total"] - t["total"]) / abs(t["total"]) for j, t in zip(jax_terms, torch_terms)]
  print(f"\ntraining: max relative loss difference {max(rel):.3g} over 20 steps; "
        f"loss {torch_terms[0]['total']:.4f} -> {torch_terms[-1]['total']:.4f}")
  assert len(rel) == 20
  assert max(rel) <= 1e-4, rel


@pytest.mark.parametrize("tie_heads,share_gamma", [(True, False), (False, True)])
def test_flax_torch_flax_round_trip_is_exact(tie_heads, share_gamma):
  config = compare.with_model_overrides(_tiny(), tie_heads=tie_heads, share_gamma=share_gamma)
  batch = compare.make_batch(config, BATCH)
  params = compare.params_for(config, batch, compare.init_superset(config, batch, seed=0))
  state = convert.flax_to_torch(params)
  compare.build_reference(config, state)  # Strict load: names and shapes match.
  back = convert.torch_to_flax(state, config.model.num_heads)
  assert jax.tree.structure(back) == jax.tree.structure(params)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(back)):
    assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)


@pytest.mark.parametrize("tie_heads,share_gamma", [(True, True), (False, False)])
def test_torch_flax_torch_round_trip_is_exact(tie_heads, share_gamma):
  config = compare.with_model_overrides(_tiny(), tie_heads=tie_heads, share_gamma=share_gamma)
  torch.manual_seed(0)
  model = torch_model.DGIReference(torch_model.ReferenceConfig.from_config(config))
  state = model.state_dict()
  back = convert.flax_to_torch(convert.torch_to_flax(state, config.model.num_heads))
  assert set(back) == set(state)
  for key, value in state.items():
    assert back[key].dtype == value.dtype and torch.equal(back[key], value), key


def test_torch_checkpoint_is_used(tmp_path):
  """A user's reference checkpoint replaces the JAX init (and parity still holds)."""
  config = compare.with_model_overrides(_tiny())  # gumbel_soft / tied / cosine.
  torch.manual_seed(1)
  model = torch_model.DGIReference(torch_model.ReferenceConfig.from_config(config))
  path = tmp_path / "reference.pt"
  torch.save({"state_dict": model.state_dict()}, path)
  rows, ok = compare.run_parity(config, torch_checkpoint=str(path), batch_size=BATCH,
                                combinations=[("gumbel_soft", True, "cosine"),
                                              ("frozen", False, "dot")])
  assert ok, compare.format_table(rows, failures_only=True)
  with torch.no_grad():
    own_loss = float(model(*compare.torch_batch(compare.make_batch(config, BATCH)), 0.5)["total"])
  row = next(r for r in rows if r.combo == "gumbel_soft/tied/cosine" and r.name == "loss/total")
  assert row.scale == pytest.approx(abs(own_loss), rel=1e-6)

"""Parity of requests that read their history as items (`data.history_repr` 'codes' /
'embedding'): the Flax model vs the PyTorch reference (float32, CPU, 'highest' matmuls).

Both read the same histories (random lengths, -1 padded, an empty and a full row) through
the same random history table. Compared: every loss term, output and parameter gradient
(the history embedding's and the codebooks' included) on the scratch encoder, on the
bundled all-MiniLM-L6-v2 and on a small random T5; and, in 'codes' mode, the gradient
that reaches the codebooks through the history positions alone. Run with `-s` to see the
measured maxima.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import jax  # noqa: E402  (after the skip: nothing here is useful without torch)
import jax.numpy as jnp  # noqa: E402

from conftest import load_config  # noqa: E402
from dgi_jax.models.dgi import DGIModel  # noqa: E402
from dgi_jax.parity import compare, convert, torch_model, training  # noqa: E402
from parity_fixtures import single_torch_thread, minilm_config  # noqa: E402,F401

BATCH = 16
HISTORY_EMBED_KEYS = {"history_embed.projection.weight", "history_embed.projection.bias",
                      "history_embed.layer_norm.weight", "history_embed.layer_norm.bias",
                      "history_embed.recency_embed"}
# T5 v1.1 layout at toy size, as in test_parity_pretrained.py; 32 query tokens plus 3
# history positions reach beyond max_distance, so the relative position bias over the
# appended positions uses every kind of bucket.
TINY_T5 = dict(vocab_size=64, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4,
               relative_attention_num_buckets=8, relative_attention_max_distance=20,
               dropout_rate=0.0, feed_forward_proj="gated-gelu")


def _with_history(config, history_repr: str):
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.data.history_repr = history_repr
  return config


def _parity(config, combinations):
  # Jitted: one compilation per combination costs less here than op-by-op dispatch,
  # whose per-primitive compilations only pay off over many combinations.
  rows, _ = compare.run_parity(config, batch_size=BATCH, combinations=combinations, jit=True)
  print("\n" + compare.format_table(rows, failures_only=True))
  for kind in ("loss", "out", "logits", "grad"):
    worst = max((r for r in rows if r.name.split("/")[0] == kind), key=lambda r: r.max_rel)
    print(f"{kind}: max_rel {worst.max_rel:.3g} max_abs {worst.max_abs:.3g} "
          f"({worst.combo} {worst.name})")
  return rows


def _assert_parity(rows, config, combinations):
  assert {r.combo for r in rows} == {compare.combo_name(*c) for c in combinations}
  for kind in ("loss", "out", "logits"):
    group = [r for r in rows if r.name.split("/")[0] == kind]
    assert group and max(r.max_rel for r in group) <= compare.LOSS_RTOL, [
        r for r in group if not r.ok]
  codes = [r for r in rows if r.name.startswith("codes/")]
  assert codes and all(r.max_abs == 0 for r in codes), [r for r in codes if not r.ok]
  grads = [r for r in rows if r.name.startswith("grad/")]
  assert max(r.max_rel for r in grads) <= compare.GRAD_RTOL, [r for r in grads if not r.ok]
  # Every parameter of every combination has a gradient row (none silently dropped) ...
  assert len(grads) == sum(len(torch_model.DGIReference(torch_model.ReferenceConfig.from_config(
      compare.with_model_overrides(config, grad_path=g, tie_heads=t, geometry=e))
  ).state_dict()) for g, t, e in combinations)
  # ... and the history embedding's carry gradient in each (the history is read).
  for combo in {r.combo for r in rows}:
    history = {r.name[len("grad/"):]: r for r in grads
               if r.combo == combo and r.name.startswith("grad/history_embed.")}
    assert set(history) == HISTORY_EMBED_KEYS, combo
    assert all(r.scale > 0 for r in history.values()), (combo, history)


@pytest.mark.parametrize("history_repr,combinations", [
    # Untied heads: the codebooks' gradient is then the quantizer's and the history's.
    ("codes", [("gumbel_soft", True, "cosine"), ("ste", False, "dot")]),
    ("embedding", [("gumbel_st", False, "cosine")])])
def test_scratch_parity(history_repr, combinations):
  config = _with_history(load_config("tiny"), history_repr)
  rows = _parity(config, combinations)
  _assert_parity(rows, compare.with_model_overrides(config), combinations)


def _codebook_grads_through_history(config, params, batch):
  """Gradients of `sum(z_q * w)` (random w [B, d]): the request path alone, whose only
  way to the codebooks in 'codes' mode is the history lookup. -> (jax, torch) gradients
  as {state_dict key: array}."""
  z_weight = np.random.default_rng(1).normal(size=(BATCH, config.model.d_model))
  model, _ = compare.build_flax(config)

  def f(p):
    request = model.apply({"params": p}, jnp.asarray(batch["query_tokens"]),
                          jnp.asarray(batch["history"]), jnp.asarray(batch["history_table"]),
                          method=DGIModel.encode_requests)
    return jnp.sum(request.z_q * z_weight.astype(np.float32))

  with jax.default_matmul_precision("highest"):
    jax_grads = convert.flax_to_torch(jax.jit(jax.grad(f))(params))
  reference = compare.build_reference(config, convert.flax_to_torch(params))
  history = compare.torch_history(batch)
  _, _, z_q = reference.encode(torch.as_tensor(batch["query_tokens"], dtype=torch.long),
                               reference.history_inputs(history["history"],
                                                        history["history_table"]))
  torch.sum(z_q * torch.as_tensor(z_weight, dtype=torch.float32)).backward()
  torch_grads = {k: (p.grad if p.grad is not None else torch.zeros_like(p)).numpy()
                 for k, p in reference.named_parameters()}
  return {k: v.numpy() for k, v in jax_grads.items()}, torch_grads


def test_codes_history_gradient_reaches_the_codebooks():
  """Known answer: through the history, exactly the codewords of the SIDs of the items in
  some row's history get gradient, in both models and to within GRAD_RTOL."""
  config = compare.with_model_overrides(_with_history(load_config("tiny"), "codes"))
  batch = compare.make_batch(config, BATCH)
  params = compare.params_for(config, batch, compare.init_superset(config, batch, seed=0))
  jax_grads, torch_grads = _codebook_grads_through_history(config, params, batch)
  assert set(jax_grads) == set(torch_grads)
  floor = compare.GRAD_SCALE_FLOOR * max(float(np.max(np.abs(g))) for g in torch_grads.values())
  worst = max(compare.diff(jax_grads[k], g, floor)[1] for k, g in torch_grads.items())
  print(f"\nrequest path gradients: max_rel {worst:.3g}")
  assert worst <= compare.GRAD_RTOL
  history = batch["history"]
  sids = batch["history_table"][history[history >= 0]]  # [items in histories, m].
  for t in range(len(config.model.codebook_sizes)):
    used = np.zeros(config.model.codebook_sizes[t], bool)
    used[sids[:, t]] = True
    for grads in (jax_grads, torch_grads):
      row_norms = np.abs(grads[f"codebooks.{t}"]).sum(axis=1)
      assert np.all(row_norms[used] > 0), (t, row_norms)
      assert np.all(row_norms[~used] == 0), (t, row_norms)
  # Nothing but the encoder, the history embedding and the codebooks is on this path.
  assert all(not np.any(g) for k, g in torch_grads.items()
             if not k.startswith(("encoder.", "history_embed.", "codebooks.")))


def test_codes_training_run_within_1e4_relative_every_step():
  """The project's optimizer on both sides, the codebooks also serving as input embeddings."""
  steps = 10
  jax_terms, torch_terms = training.train_parity(
      _with_history(load_config("tiny"), "codes"), steps=steps, batch_size=BATCH)
  rel = [abs(j["total"] - t["total"]) / abs(t["total"]) for j, t in zip(jax_terms, torch_terms)]
  print(f"\ntraining: max relative loss difference {max(rel):.3g} over {steps} steps")
  assert len(rel) == steps
  assert max(rel) <= 1e-4, rel


@pytest.mark.parametrize("history_repr", ["codes", "embedding"])
def test_history_embed_round_trips_are_exact(history_repr):
  config = compare.with_model_overrides(_with_history(load_config("tiny"), history_repr),
                                        tie_heads=False)
  batch = compare.make_batch(config, BATCH)
  params = compare.params_for(config, batch, compare.init_superset(config, batch, seed=0))
  assert "history_embed" in params
  state = convert.flax_to_torch(params)
  assert HISTORY_EMBED_KEYS <= set(state)
  compare.build_reference(config, state)  # Strict load: names and shapes match.
  back = convert.torch_to_flax(state, config.model.num_heads)
  assert jax.tree.structure(back) == jax.tree.structure(params)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(back)):
    assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)
  torch.manual_seed(0)
  state = torch_model.DGIReference(torch_model.ReferenceConfig.from_config(config)).state_dict()
  again = convert.flax_to_torch(convert.torch_to_flax(state, config.model.num_heads))
  assert set(again) == set(state)
  for key, value in state.items():
    assert again[key].dtype == value.dtype and torch.equal(again[key], value), key


def test_history_batch_and_reference_inputs():
  """The batch covers the edge cases, and the reference refuses a request without them."""
  config = compare.with_model_overrides(_with_history(load_config("tiny"), "codes"))
  batch = compare.make_batch(config, BATCH)
  history, table = batch["history"], batch["history_table"]
  lengths = (history >= 0).sum(axis=1)
  h = config.data.max_history
  assert history.shape == (BATCH, h) and lengths.min() == 0 and lengths.max() == h
  # Right-padded: no item after a -1.
  assert all(np.all(row[:n] >= 0) and np.all(row[n:] == -1) for row, n in zip(history, lengths))
  assert table.dtype == np.int32 and table.shape[1] == len(config.model.codebook_sizes)
  assert np.all(table < np.asarray(config.model.codebook_sizes)) and np.all(table >= 0)
  recency = torch_model.recency(torch.as_tensor(history[-1:], dtype=torch.long))
  assert recency.tolist() == [list(range(h - 1, -1, -1))]
  embedding = compare.make_batch(_with_history(config, "embedding"), BATCH)["history_table"]
  np.testing.assert_allclose(np.linalg.norm(embedding, axis=1), 1.0, rtol=1e-6)
  text = compare.make_batch(_with_history(config, "text"), BATCH)
  assert not set(compare.HISTORY_KEYS) & set(text)
  np.testing.assert_array_equal(text["query_tokens"], batch["query_tokens"])
  torch.manual_seed(0)
  model = torch_model.DGIReference(torch_model.ReferenceConfig.from_config(config))
  with pytest.raises(ValueError, match="history"):
    model(*compare.torch_batch(batch), 0.5)


@pytest.mark.parametrize("history_repr", ["codes", "embedding"])
def test_minilm_parity(minilm_config, history_repr):
  # History positions enter after BERT's embedding LayerNorm, under all 6 layers.
  config = _with_history(minilm_config, history_repr)
  combinations = [("gumbel_soft", True, "cosine")]
  rows = _parity(config, combinations)
  _assert_parity(rows, compare.with_model_overrides(config), combinations)
  assert any(r.name == "grad/encoder.embeddings.word_embeddings.weight" for r in rows)


def test_t5_parity(tmp_path):
  transformers = pytest.importorskip("transformers")
  torch.manual_seed(1)
  transformers.T5EncoderModel(transformers.T5Config(**TINY_T5)).save_pretrained(tmp_path)
  config = _with_history(compare.with_pretrained_encoder(load_config("tiny"), str(tmp_path)),
                         "codes")
  combinations = [("gumbel_soft", False, "cosine")]
  rows = _parity(config, combinations)
  _assert_parity(rows, compare.with_model_overrides(config), combinations)
  assert any(r.name == "grad/encoder.encoder.block.0.layer.0.SelfAttention."
             "relative_attention_bias.weight" for r in rows)

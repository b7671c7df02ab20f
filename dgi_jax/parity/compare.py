"""JAX/PyTorch parity check: both models, same weights, batch and Gumbel noise.

`run_parity(config)` builds the Flax `DGIModel` and the PyTorch `DGIReference` from one
set of weights for every ablation combination (grad_path x tie_heads x geometry = 16),
runs forward and backward on one batch, and returns one row per compared quantity:
each loss term, `z_base`, `z_q`, the logits and hard codes of each level, and the
gradient of every parameter (in the PyTorch layout, see `convert`).

Differences: `max_abs = max |jax - torch|`; `max_rel = max_abs / scale` with `scale` the
largest magnitude of the PyTorch value. For gradients the scale is floored at
`GRAD_SCALE_FLOOR` times the largest gradient entry of the whole model: some leaves
(attention key biases: softmax ignores a per-row constant) have an exactly zero gradient
in exact arithmetic, and rounding noise around zero has no meaningful relative size.

A config with a pre-trained encoder (`model.encoder` 'bert' / 't5') is compared the same
way against `transformers`' own encoder in the reference, starting from the checkpoint's
weights (`model.pretrained`), on `PRETRAINED_COMBINATIONS` unless told otherwise.

With `data.history_repr` 'codes' or 'embedding' the batch also carries request histories
(item indices, -1 padded) and a random history table, fed to both models, and the
history embedding's parameters are compared with the rest.
"""

import dataclasses
import functools
import itertools
from typing import Dict, List, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

LOSS_RTOL = 1e-5  # Loss terms and outputs (logits, pooled embeddings).
GRAD_RTOL = 1e-4  # Gradient leaves.
GRAD_SCALE_FLOOR = 1e-3  # Fraction of the model's largest gradient entry, see above.
CONDITIONING_FACTOR = 10  # format_table: failures within this factor of f32_floor.
TERMS = ("ntp", "global", "local", "infonce", "div", "total")
BATCH_KEYS = ("item_tokens", "query_tokens", "item_index")
HISTORY_KEYS = ("history", "history_table")  # Only with history_repr 'codes' / 'embedding'.
COMBINATIONS = tuple(itertools.product(("gumbel_soft", "ste", "gumbel_st", "frozen"),
                                       (True, False), ("cosine", "dot")))
# Default for a pre-trained encoder: each gradient path into the encoder under the
# default geometry and heads (configs/minilm.py's), plus dot geometry with untied heads
# twice. The options only change what reaches the encoder, and the scratch run covers
# their 16 products. Measured on all-MiniLM-L6-v2 (2 busy CPU cores): the first
# combination ~30-45 s (op-by-op compilation), each further one 4-9 s, all 16 ~140 s.
# Left out: the soft paths (gumbel_soft, frozen) under dot geometry, whose level-2 logits
# at width 384 differ by 1.3-1.4e-5 relative, against a float32 floor (PyTorch float32
# vs float64) of 0.7-0.9e-5: conditioning, not a difference of the implementations.
PRETRAINED_COMBINATIONS = (("gumbel_soft", True, "cosine"), ("ste", True, "cosine"),
                           ("gumbel_st", True, "cosine"), ("frozen", True, "cosine"),
                           ("ste", False, "dot"), ("gumbel_st", False, "dot"))


def _torch():
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError("The parity check needs PyTorch: pip install 'dgi_jax[torch]'") from e
  return torch


@dataclasses.dataclass
class Row:
  """One compared quantity of one ablation combination."""
  combo: str  # e.g. 'gumbel_soft/tied/cosine'.
  name: str  # 'loss/ntp', 'logits/0', 'codes/0', 'grad/<state_dict key>', ...
  max_abs: float
  max_rel: float
  tol: float  # Relative tolerance (codes: number of mismatches allowed, 0).
  ok: bool
  scale: float = 0.0  # max |PyTorch value| (a loss term's value, up to sign).
  # How far the float32 reference itself is from a float64 run, on the same relative
  # scale (codes: mismatches). A failing row with a comparable floor is float32
  # conditioning of the problem (e.g. sharp softmaxes under dot geometry), not a bug.
  f32_floor: float = float("nan")


def combo_name(grad_path: str, tie_heads: bool, geometry: str) -> str:
  return f"{grad_path}/{'tied' if tie_heads else 'untied'}/{geometry}"


def with_model_overrides(config, **overrides):
  """Copy of `config` with `model` fields replaced.

  Dropout is switched off and the compute dtype set to float32: the reference is a
  deterministic float32 model, and parity is only defined against that. The decoder
  starts from random weights (no identity init), so every decoder weight carries
  gradient in the comparison. A pre-trained encoder's architecture is read from
  `model.pretrained` if the config does not carry it yet (`encoders.resolve_pretrained`).
  """
  if config.model.encoder != "scratch":
    from dgi_jax.models import encoders  # pylint: disable=g-import-not-at-top
    config = encoders.resolve_pretrained(config)
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.model.dropout_rate = 0.0
    config.model.dtype = "float32"
    config.model.decoder_identity_init = False
    for key, value in overrides.items():
      config.model[key] = value
  return config


def with_pretrained_encoder(config, directory: str, kind: Optional[str] = None):
  """Copy of `config` on the pre-trained encoder in `directory` (architecture resolved).

  The way to build a pre-trained parity config from any base config (e.g. the tiny one)
  without a file under configs/: `kind` ('bert' / 't5') defaults to the checkpoint's own.
  The encoder's width becomes `d_model` and its vocabulary `data.vocab_size`; the SID
  decoder keeps the base config's heads, MLP width and depth.
  """
  from dgi_jax.models import encoders, pretrained  # pylint: disable=g-import-not-at-top
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.model.encoder = kind or pretrained.read_spec(directory).kind
    config.model.pretrained = str(directory)
    config.model.encoder_spec = ""  # Read again from `directory`.
  return encoders.resolve_pretrained(config)


def encoder_spec(config):
  """The pre-trained encoder's `EncoderSpec` of a resolved config; None for 'scratch'."""
  from dgi_jax.models.config import ModelConfig  # pylint: disable=g-import-not-at-top
  return ModelConfig.from_config(config).encoder_spec


def reads_history_items(config) -> bool:
  """Whether `config`'s requests read history items ('codes' / 'embedding')."""
  return config.data.history_repr != "text"


def make_batch(config, batch_size: int, seed: int = 0) -> Dict[str, object]:
  """A deterministic batch of random token rows, with duplicate targets and Gumbel noise.

  Rows with the same `item_index` share their item text (they are the same item), so the
  InfoNCE duplicate mask is exercised as in real data. With history items the batch also
  has `history` int32 [B, H] (H = data.max_history; random items of the same catalogue,
  oldest first, right-padded with -1; row 0 empty, the last row full, the others of
  random length) and `history_table` (random SIDs int32 [N, m] within each codebook's
  size, or unit-length embeddings float32 [N, d], N the catalogue size). The token rows
  and noise are the same as without history for the same seed.
  """
  rng = np.random.default_rng(seed)
  vocab, li, lq = config.data.vocab_size, config.data.max_item_len, config.data.max_query_len
  num_items = max(batch_size * 3 // 4, 1)
  item_index = rng.integers(0, num_items, size=batch_size)
  catalogue = {}
  for i in np.unique(item_index):
    row = np.zeros(li, np.int32)
    n = rng.integers(2, li + 1)
    row[:n] = rng.integers(1, vocab, size=n)
    catalogue[int(i)] = row
  item_tokens = np.stack([catalogue[int(i)] for i in item_index])
  query_tokens = np.zeros((batch_size, lq), np.int32)
  for b in range(batch_size):
    n = rng.integers(2, lq + 1)
    query_tokens[b, :n] = rng.integers(1, vocab, size=n)
  noise = [rng.gumbel(size=(batch_size, k)).astype(np.float32)
           for k in config.model.codebook_sizes]
  batch = dict(item_tokens=item_tokens, query_tokens=query_tokens,
               item_index=item_index.astype(np.int32), gumbel_noise=noise)
  if reads_history_items(config):
    batch.update(_make_history(config, batch_size, num_items, rng))
  return batch


def _make_history(config, batch_size: int, num_items: int,
                  rng: np.random.Generator) -> Dict[str, np.ndarray]:
  """`history` [B, H] and `history_table` of `make_batch`."""
  h = int(config.data.max_history)
  lengths = rng.integers(0, h + 1, size=batch_size)
  # The edge cases: no history at all (only the query's tokens are attended to and
  # pooled) and a full one (every recency row is used).
  lengths[0], lengths[-1] = 0, h
  history = np.full((batch_size, h), -1, np.int32)
  for b, n in enumerate(lengths):
    history[b, :n] = rng.integers(0, num_items, size=n)
  if config.data.history_repr == "codes":
    table = np.stack([rng.integers(0, k, size=num_items)
                      for k in config.model.codebook_sizes], axis=1).astype(np.int32)
  else:
    table = rng.normal(size=(num_items, int(config.model.d_model)))
    table = (table / np.linalg.norm(table, axis=1, keepdims=True)).astype(np.float32)
  return dict(history=history, history_table=table)


def jax_inputs(batch) -> Dict[str, jax.Array]:
  """The arrays of `batch` the Flax loss reads (its history ones only if present)."""
  return {k: jnp.asarray(batch[k]) for k in BATCH_KEYS + HISTORY_KEYS if k in batch}


def build_flax(config):
  """(DGIModel, model config) for `config`."""
  from dgi_jax.models.config import ModelConfig  # pylint: disable=g-import-not-at-top
  from dgi_jax.models.dgi import DGIModel  # pylint: disable=g-import-not-at-top
  model_config = ModelConfig.from_config(config)
  return DGIModel(model_config), model_config


def _init_args(batch):
  return (jnp.asarray(batch["item_tokens"]), jnp.asarray(batch["query_tokens"]),
          [jnp.asarray(g) for g in batch["gumbel_noise"]], 1.0)


def _init_kwargs(batch):
  return {k: jnp.asarray(batch[k]) for k in HISTORY_KEYS if k in batch}


@functools.lru_cache(maxsize=8)
def _jitted_init(model_config):
  # Jitted (one compilation is cheaper than compiling every random op of an eager init)
  # and cached per model config, so repeated checks do not recompile.
  from dgi_jax.models.dgi import DGIModel  # pylint: disable=g-import-not-at-top
  return jax.jit(DGIModel(model_config).init)


def init_flax_params(config, batch, seed: int):
  """Flax params (numpy leaves) of the model `config` describes, initialised from `seed`."""
  _, model_config = build_flax(config)
  variables = _jitted_init(model_config)(jax.random.PRNGKey(seed), *_init_args(batch),
                                        **_init_kwargs(batch))
  return jax.tree.map(np.asarray, dict(variables["params"]))


def init_superset(config, batch, seed: int):
  """Params of the untied, unshared-gamma variant of `config`: every leaf any variant has.

  All variants draw their weights from it (`params_for`), so they share one set of
  weights and one compiled init. A pre-trained encoder gets the weights of
  `model.pretrained` (as training starts from them), the rest the init of `seed`.
  """
  config = with_model_overrides(config, tie_heads=False, share_gamma=False)
  params = init_flax_params(config, batch, seed)
  if config.model.encoder == "scratch" or not config.model.pretrained:
    return params
  from dgi_jax.models import encoders  # pylint: disable=g-import-not-at-top
  _, model_config = build_flax(config)
  loaded = encoders.load_pretrained_params(params, model_config, config.model.pretrained)
  return jax.tree.map(np.asarray, loaded)


def params_for(config, batch, superset):
  """The leaves of `superset` that the model of `config` has (e.g. no heads when tied)."""
  model, _ = build_flax(config)
  wanted = jax.eval_shape(model.init, jax.random.PRNGKey(0), *_init_args(batch),
                          **_init_kwargs(batch))["params"]

  def select(shapes, source, path):
    out = {}
    for name, value in shapes.items():
      if name not in source:
        raise KeyError(f"no value for {'/'.join(path + (name,))}")
      out[name] = (select(value, source[name], path + (name,)) if hasattr(value, "items")
                   else source[name])
    return out
  return select(wanted, superset, ())


def flax_loss_fn(config):
  """`loss(params, batch, gumbel_noise, tau) -> (total, (terms, outputs))` of the Flax model;
  `batch` as `jax_inputs` gives it."""
  from dgi_jax import losses  # pylint: disable=g-import-not-at-top
  model, model_config = build_flax(config)

  def loss(params, batch, gumbel_noise, tau):
    outputs = model.apply({"params": params}, batch["item_tokens"], batch["query_tokens"],
                          gumbel_noise, tau, history=batch.get("history"),
                          history_table=batch.get("history_table"))
    terms = losses.dgi_losses(outputs, batch["item_index"], config.loss,
                              model_config.geometry)
    return terms["total"], (terms, outputs)
  return loss


def flax_forward_backward(config, params, batch, tau: float, jit: bool = False):
  """Loss terms, outputs and gradients of the Flax model (numpy results)."""
  loss = flax_loss_fn(config)
  arrays = jax_inputs(batch)
  noise = [jnp.asarray(g) for g in batch["gumbel_noise"]]
  grad_fn = jax.value_and_grad(loss, has_aux=True)
  if jit:
    grad_fn = jax.jit(grad_fn)
  (_, (terms, outputs)), grads = grad_fn(params, arrays, noise, jnp.float32(tau))
  result = {f"loss/{k}": terms[k] for k in TERMS}
  result.update(_outputs(outputs["z_base"], outputs["z_q"], outputs["logits"],
                         outputs["codes"]))
  return jax.tree.map(np.asarray, result), jax.tree.map(np.asarray, grads)


def _outputs(z_base, z_q, logits, codes) -> Dict[str, object]:
  out = {"out/z_base": z_base, "out/z_q": z_q}
  out.update({f"logits/{t}": l for t, l in enumerate(logits)})
  out.update({f"codes/{t}": c for t, c in enumerate(codes)})
  return out


def build_reference(config, state_dict):
  """The PyTorch reference of `config`, loaded with `state_dict` (strict)."""
  from dgi_jax.parity import torch_model  # pylint: disable=g-import-not-at-top
  model = torch_model.DGIReference(torch_model.ReferenceConfig.from_config(config))
  model.load_state_dict(state_dict, strict=True)
  return model


def torch_batch(batch):
  """numpy batch -> (item_tokens, query_tokens, item_index, gumbel_noise) tensors."""
  torch = _torch()
  return (torch.as_tensor(batch["item_tokens"], dtype=torch.long),
          torch.as_tensor(batch["query_tokens"], dtype=torch.long),
          torch.as_tensor(batch["item_index"], dtype=torch.long),
          [torch.as_tensor(g) for g in batch["gumbel_noise"]])


def torch_history(batch) -> Dict[str, object]:
  """The reference's `history` / `history_table` keyword arguments of `batch` ({} for
  'text'): indices as long tensors, an embedding table as it is."""
  torch = _torch()
  return {k: (torch.as_tensor(batch[k], dtype=torch.long)
              if np.issubdtype(batch[k].dtype, np.integer) else torch.as_tensor(batch[k]))
          for k in HISTORY_KEYS if k in batch}


def torch_forward_backward(config, state_dict, batch, tau: float, double: bool = False):
  """Loss terms, outputs and gradients (state_dict keys) of the PyTorch reference.

  `double` runs it in float64 (weights and noise cast up): the float32 results' distance
  from it is the float32 error floor of the problem itself. (transformers' T5 computes
  its RMS norms' variance in float32 whatever the model's dtype, so a T5 encoder's floor
  also holds that rounding.)
  """
  torch = _torch()
  model = build_reference(config, state_dict)
  item_tokens, query_tokens, item_index, noise = torch_batch(batch)
  if double:
    model = model.double()
    noise = [g.double() for g in noise]
  # A float64 model casts an embedding history table up as it reads it.
  out = model(item_tokens, query_tokens, item_index, noise, tau, **torch_history(batch))
  out["total"].backward()
  result = {f"loss/{k}": out[k] for k in TERMS}
  result.update(_outputs(out["z_base"], out["z_q"], out["logits"], out["codes"]))
  result = {k: v.detach().numpy() for k, v in result.items()}
  # An unused parameter (gamma under dot geometry) has no .grad; JAX reports zeros. Every
  # name of a tied parameter (T5's token table) is listed, as in the state_dict.
  grads = {k: (p.grad if p.grad is not None else torch.zeros_like(p)).numpy()
           for k, p in model.named_parameters(remove_duplicate=False)}
  return result, grads


def diff(a, b, floor: float = 0.0) -> Tuple[float, float]:
  """(max |a - b|, that over max(max |b|, floor)); 0 relative where both are all zero."""
  a = np.asarray(a, np.float64)
  b = np.asarray(b, np.float64)
  max_abs = float(np.max(np.abs(a - b))) if a.size else 0.0
  scale = max(float(np.max(np.abs(b))) if b.size else 0.0, floor)
  return max_abs, (max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else np.inf))


def compare_one(combo: str, jax_out, torch_out, torch64_out=None) -> List[Row]:
  """Rows for one combination.

  Args:
    combo: the combination's name.
    jax_out, torch_out: (results, gradients) of the Flax model and of the reference, as
      numpy dicts; gradients keyed by state_dict keys.
    torch64_out: optional float64 reference run; fills `Row.f32_floor`.
  """
  (jax_result, jax_grads), (torch_result, torch_grads) = jax_out, torch_out
  if set(jax_grads) != set(torch_grads):
    raise KeyError(f"{combo}: parameter sets differ: {sorted(set(jax_grads) ^ set(torch_grads))}")
  grad_floor = GRAD_SCALE_FLOOR * max(float(np.max(np.abs(g))) for g in torch_grads.values())
  quantities = [(name, jax_result[name], ref, LOSS_RTOL, 0.0,
                 torch64_out[0][name] if torch64_out else None)
                for name, ref in torch_result.items()]
  quantities += [(f"grad/{key}", jax_grads[key], ref, GRAD_RTOL, grad_floor,
                  torch64_out[1][key] if torch64_out else None)
                 for key, ref in torch_grads.items()]
  rows = []
  for name, got, ref, tol, floor, ref64 in quantities:
    if name.startswith("codes/"):
      mismatches = int(np.sum(np.asarray(got) != np.asarray(ref)))
      floor64 = float("nan") if ref64 is None else float(np.sum(ref64 != np.asarray(ref)))
      rows.append(Row(combo, name, mismatches, mismatches / max(np.size(ref), 1), 0,
                      mismatches == 0, 0.0, floor64))
      continue
    max_abs, max_rel = diff(got, ref, floor)
    # The float32 reference's own distance from float64, on the same relative scale.
    floor64 = float("nan") if ref64 is None else diff(ref, ref64, max(
        floor, float(np.max(np.abs(ref)))))[1]
    rows.append(Row(combo, name, max_abs, max_rel, tol, max_rel <= tol,
                    float(np.max(np.abs(ref))), floor64))
  return rows


def load_torch_checkpoint(path: str):
  """A reference `state_dict` saved with `torch.save` (bare, or under 'state_dict')."""
  state = _torch().load(path, map_location="cpu", weights_only=True)
  if "state_dict" in state and isinstance(state["state_dict"], dict):
    state = state["state_dict"]
  return state


def _overlay(base, update, path=()):
  """`base` with every leaf present in `update` replaced (shapes must agree)."""
  out = {}
  for name, value in base.items():
    if isinstance(value, dict):
      out[name] = _overlay(value, update.get(name, {}), path + (name,))
    elif name in update:
      if np.shape(update[name]) != np.shape(value):
        raise ValueError(f"checkpoint leaf {'/'.join(path + (name,))} has shape "
                         f"{np.shape(update[name])}, the model wants {np.shape(value)}")
      out[name] = np.asarray(update[name], np.float32)
    else:
      out[name] = value
  return out


def run_parity(config, torch_checkpoint: Optional[str] = None, batch_size: Optional[int] = None,
               tau: float = 0.5, seed: int = 0,
               combinations: Optional[Sequence[Tuple[str, bool, str]]] = None,
               jit: bool = False, float64: bool = True) -> Tuple[List[Row], bool]:
  """Compares the Flax model with the PyTorch reference for every ablation combination.

  Args:
    config: the full config (data, model and loss sections are read). A pre-trained
      encoder is resolved from `model.pretrained` if needed, and starts from its weights.
    torch_checkpoint: optional path of a reference `state_dict`; converted to Flax, it
      replaces the JAX init (leaves a combination needs but the checkpoint lacks, e.g.
      the untied heads of a tied checkpoint, stay at the JAX init or the pre-trained
      encoder's weights).
    batch_size: rows of the batch; default `config.train.global_batch_size`.
    tau: Gumbel-softmax temperature.
    seed: seed of the JAX init, the batch and the noise.
    combinations: (grad_path, tie_heads, geometry) triples; default all 16
      (`COMBINATIONS`), or `PRETRAINED_COMBINATIONS` for a pre-trained encoder.
    jit: run the Flax side under `jax.jit`. Off by default: each combination is a
      different program, and 16 compilations cost more than op-by-op dispatch, whose
      per-primitive compilations are shared by all combinations (the jitted program is
      covered by `training.train_parity`). Either agrees with PyTorch to ~1e-6.
    float64: also run the reference in float64, to report each row's float32 floor.

  Returns:
    (rows, ok): one `Row` per compared quantity, and whether all are within tolerance.
  """
  from dgi_jax.parity import convert  # pylint: disable=g-import-not-at-top
  config = with_model_overrides(config)  # Resolves a pre-trained encoder once.
  spec = encoder_spec(config)
  if combinations is None:
    combinations = COMBINATIONS if spec is None else PRETRAINED_COMBINATIONS
  batch_size = batch_size or int(config.train.global_batch_size)
  checkpoint = None
  if torch_checkpoint:
    checkpoint = convert.torch_to_flax(load_torch_checkpoint(torch_checkpoint),
                                       int(config.model.num_heads), spec)
  rows = []
  with jax.default_matmul_precision("highest"):
    # One batch and one set of weights for all combinations.
    batch = make_batch(with_model_overrides(config), batch_size, seed)
    superset = init_superset(config, batch, seed)
    if checkpoint is not None:
      superset = _overlay(superset, checkpoint)
    for grad_path, tie_heads, geometry in combinations:
      cfg = with_model_overrides(config, grad_path=grad_path, tie_heads=tie_heads,
                                 geometry=geometry)
      params = params_for(cfg, batch, superset)
      jax_result, jax_grads = flax_forward_backward(cfg, params, batch, tau, jit)
      jax_grads = {k: v.numpy() for k, v in convert.flax_to_torch(jax_grads, spec).items()}
      state = convert.flax_to_torch(params, spec)
      torch_out = torch_forward_backward(cfg, state, batch, tau)
      torch64_out = torch_forward_backward(cfg, state, batch, tau, True) if float64 else None
      rows += compare_one(combo_name(grad_path, tie_heads, geometry),
                          (jax_result, jax_grads), torch_out, torch64_out)
  return rows, all(r.ok for r in rows)


def format_table(rows: Sequence[Row], failures_only: bool = False) -> str:
  """Aligned text table of `rows` plus, per kind of quantity, the worst relative difference."""
  shown = [r for r in rows if r.ok is False] if failures_only else list(rows)
  header = ("combination", "quantity", "max|torch|", "max_abs", "max_rel", "tol", "ok",
            "f32_floor")
  lines = [(r.combo, r.name, f"{r.scale:.4g}", f"{r.max_abs:.3g}", f"{r.max_rel:.3g}",
            f"{r.tol:g}", "ok" if r.ok else "FAIL", f"{r.f32_floor:.2g}") for r in shown]
  widths = [max(len(str(x)) for x in col) for col in zip(header, *lines)]
  fmt = "  ".join(f"{{:<{w}}}" for w in widths)
  out = [fmt.format(*header), fmt.format(*("-" * w for w in widths))]
  out += [fmt.format(*line) for line in lines]
  out = [line.rstrip() for line in out]
  out.append("")
  for kind in ("loss", "out", "logits", "codes", "grad"):
    group = [r for r in rows if r.name.split("/")[0] == kind]
    if group:
      worst = max(group, key=lambda r: r.max_rel)
      out.append(f"worst {kind:<6} max_rel {worst.max_rel:.3g} (tol {worst.tol:g}) at "
                 f"{worst.combo} {worst.name}")
  failed = [r for r in rows if not r.ok]
  out.append(f"{len(rows)} quantities, {len(failed)} outside tolerance: "
             f"{'PARITY OK' if not failed else 'PARITY FAILED'}")
  conditioned = [r for r in failed if r.max_rel <= CONDITIONING_FACTOR * r.f32_floor]
  if conditioned:
    out.append(f"{len(conditioned)} of the failures are within {CONDITIONING_FACTOR}x the "
               "float32 reference's own error vs float64 (f32_floor): float32 conditioning "
               "of those inputs rather than an implementation difference")
  return "\n".join(out)

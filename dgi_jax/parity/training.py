"""Training parity: the same AdamW run in JAX (jitted step) and in PyTorch.

The JAX side uses the project's optimizer (`dgi_jax.optim.make_optimizer`: global-norm
clipping, then AdamW with a learning rate per parameter group, linear warm-up and
decay, weight decay on the leaves `optim.decay_mask` selects). `ReferenceOptimizer`
replicates it in PyTorch: the same clipping formula, `torch.optim.AdamW` with one
parameter group per (learning rate, decay) pair, and the learning rate of each step set
from the same schedule. Parameter groups are read off the JAX optimizer's own labels and
masks, converted to `state_dict` keys, so the two always group the same parameters.
Parameters the JAX optimizer freezes (`optim.frozen`, `optim.freeze_encoder_layers`) are in
no group: they keep their values but, as in optax, count in the clipping norm.
"""

from typing import Dict, List, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch

from dgi_jax import optim
from dgi_jax.parity import compare, convert


def _flags_by_key(params, flags, encoder_spec=None) -> Dict[str, bool]:
  """Per-leaf booleans of a Flax tree -> {state_dict key: bool} (via the converter)."""
  full = jax.tree.map(lambda p, f: np.full(np.shape(p), bool(f)), params, flags)
  return {k: bool(v.all()) for k, v in convert.flax_to_torch(full, encoder_spec).items()}


def _labels_by_key(params, optim_config, encoder_spec) -> Dict[str, Dict[str, bool]]:
  """{label: {state_dict key: bool}} for every label of `optim.param_labels`."""
  labels = optim.param_labels(params, optim_config)
  return {name: _flags_by_key(params, jax.tree.map(lambda l, n=name: l == n, labels),
                              encoder_spec)
          for name in ("frozen", *optim.peak_learning_rates(optim_config))}


class ReferenceOptimizer:
  """PyTorch replica of `optim.make_optimizer` for the reference model."""

  def __init__(self, model: torch.nn.Module, flax_params, optim_config, total_steps: int):
    spec = model.cfg.encoder_spec
    labels = _labels_by_key(flax_params, optim_config, spec)
    decays = _flags_by_key(flax_params, optim.decay_mask(flax_params), spec)
    self._params = list(model.parameters())
    self._max_norm = float(optim_config.grad_clip_norm)
    peaks = optim.peak_learning_rates(optim_config)
    self._schedules = {
        label: optim.learning_rate_schedule(peak, optim_config.warmup_steps, total_steps)
        for label, peak in peaks.items()}
    groups = []
    for label in peaks:  # Frozen parameters join no group.
      for decay in (True, False):
        chosen = [p for k, p in model.named_parameters()
                  if labels[label][k] and decays[k] == decay]
        if chosen:
          groups.append(dict(params=chosen, label=label, lr=0.0,
                             weight_decay=float(optim_config.weight_decay) if decay else 0.0))
    # optax.adamw defaults: eps 1e-8, eps_root 0 (same as torch's eps placement).
    self.optimizer = torch.optim.AdamW(
        groups, betas=(float(optim_config.b1), float(optim_config.b2)), eps=1e-8)

  def step(self, step_index: int):
    """Clips the gradients as optax does, sets this step's learning rates, updates."""
    # An unused parameter (gamma under dot geometry) has no .grad and AdamW would skip
    # it; optax updates it with a zero gradient (moments decay, weight decay applies).
    for p in self._params:
      if p.grad is None:
        p.grad = torch.zeros_like(p)
    grads = [p.grad for p in self._params]
    # optax: t / norm * max_norm when norm >= max_norm, else t. Multi-tensor kernels with
    # no host sync, so that a GPU step is not one launch per tensor.
    norm = torch.nn.utils.get_total_norm(grads)
    keep = norm < self._max_norm
    one = torch.ones_like(norm)
    # pylint: disable=protected-access
    torch._foreach_div_(grads, torch.where(keep, one, norm))
    torch._foreach_mul_(grads, torch.where(keep, one, one * self._max_norm))
    for group in self.optimizer.param_groups:
      group["lr"] = float(self._schedules[group["label"]](step_index))
    self.optimizer.step()
    # All parameters, not only the optimizer's: a frozen one's gradient must not accumulate.
    torch._foreach_zero_(grads)
    # pylint: enable=protected-access


def train_parity(config, steps: int = 20, batch_size: int = 0, seed: int = 0,
                 lr_scale: float = 0.1, jit: bool = True
                 ) -> Tuple[List[Dict[str, float]], List[Dict[str, float]]]:
  """Trains both models from one JAX init on the same batches, noise and temperatures.

  Each step draws a fresh batch and Gumbel noise (`compare.make_batch` with seed
  `seed + 1 + step`; with history items also fresh histories and a fresh history table)
  and the temperature `optim.gumbel_temperature(step)`, annealed from `tau_start` to
  `tau_end` over the `steps` steps.

  Why `lr_scale` < 1: at the tiny config's learning rates (1e-3 / 1e-2) the run is
  chaotic in float32 — Adam's sign-like early updates and the sharpening Gumbel softmax
  grow a 1e-7 relative perturbation of the initial weights to ~1e-2 in the loss within
  20 steps in JAX alone — so a trajectory comparison would measure that chaos, not the
  implementations. At a tenth of those rates (the paper's 10x ratio kept) both stay
  within ~1e-6 of each other for the whole run.

  Args:
    config: the full config (data, model, loss, optim; dropout is switched off).
    steps: optimisation steps (also the schedules' total length).
    batch_size: rows per batch; 0 = `config.train.global_batch_size`.
    seed: seed of the JAX init and the data.
    lr_scale: factor on both peak learning rates (see above).
    jit: jit the forward/backward (one compilation; op-by-op dispatch of a whole
      training step costs more than that over 20 steps).

  Returns:
    (jax_terms, torch_terms): per step, the loss terms before that step's update.
  """
  config = compare.with_model_overrides(config)  # Resolves a pre-trained encoder.
  with config.unlocked():
    config.optim.backbone_lr = float(config.optim.backbone_lr) * lr_scale
    config.optim.quantizer_lr = float(config.optim.quantizer_lr) * lr_scale
    config.optim.decoder_lr = float(config.optim.decoder_lr) * lr_scale
  batch_size = batch_size or int(config.train.global_batch_size)
  batches = [compare.make_batch(config, batch_size, seed + 1 + s) for s in range(steps)]
  taus = [float(optim.gumbel_temperature(s, config.optim, steps)) for s in range(steps)]
  # Drawn from the same superset init as `compare.run_parity` (one compiled init).
  params = compare.params_for(config, batches[0],
                              compare.init_superset(config, batches[0], seed))

  reference = compare.build_reference(
      config, convert.flax_to_torch(params, compare.encoder_spec(config)))
  torch_opt = ReferenceOptimizer(reference, params, config.optim, steps)
  optimizer = optim.make_optimizer(config.optim, steps)
  loss = compare.flax_loss_fn(config)

  def apply_update(grads, opt_state, params):
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  grad_fn = jax.value_and_grad(loss, has_aux=True)
  if jit:
    grad_fn = jax.jit(grad_fn)
  # The update is always jitted: op by op it would compile every optax primitive for
  # every parameter shape.
  apply_update = jax.jit(apply_update)

  def jax_step(params, opt_state, batch, noise, tau):
    (_, (terms, _)), grads = grad_fn(params, batch, noise, tau)
    return (*apply_update(grads, opt_state, params), terms)

  jax_params = jax.tree.map(jnp.asarray, params)
  opt_state = optimizer.init(jax_params)
  jax_terms, torch_terms = [], []
  with jax.default_matmul_precision("highest"):
    for s, (batch, tau) in enumerate(zip(batches, taus)):
      arrays = compare.jax_inputs(batch)
      noise = [jnp.asarray(g) for g in batch["gumbel_noise"]]
      jax_params, opt_state, terms = jax_step(jax_params, opt_state, arrays, noise,
                                              jnp.float32(tau))
      jax_terms.append({k: float(v) for k, v in terms.items()})

      out = reference(*compare.torch_batch(batch), tau, **compare.torch_history(batch))
      out["total"].backward()
      torch_opt.step(s)
      torch_terms.append({k: float(out[k].detach()) for k in compare.TERMS})
  return jax_terms, torch_terms

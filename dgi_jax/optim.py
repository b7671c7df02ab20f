"""Optimiser and schedules: AdamW with separate backbone / decoder / quantizer learning
rates."""

import jax
import jax.numpy as jnp
import optax

from dgi_jax.models import encoders

QUANTIZER_PARAMS = ("codebook_", "gamma_")


def is_frozen(name: str, optim_config) -> bool:
  """Whether the top-level parameter `name` is listed (by prefix) in `optim.frozen`."""
  return name.startswith(tuple(optim_config.frozen))


def _freezes_anything(optim_config) -> bool:
  return bool(optim_config.frozen) or optim_config.freeze_encoder_layers > 0


def has_decoder_group(optim_config) -> bool:
  """Whether the parameters outside the encoder towers and the quantizer train at their
  own `optim.decoder_lr` (else at `backbone_lr`, in the backbone group)."""
  return optim_config is not None and float(optim_config.decoder_lr) > 0


def param_labels(params, optim_config=None):
  """'frozen' for the top-level names `optim.frozen` lists and for the encoder embeddings
  and bottom layers `optim.freeze_encoder_layers` names, 'quantizer' for codebooks and
  gammas, 'decoder' for the rest outside the encoder towers when `optim.decoder_lr` is
  set, 'backbone' for everything else."""
  def label(path, _):
    names = tuple(p.key if hasattr(p, "key") else str(p) for p in path)
    if optim_config is not None and (
        is_frozen(names[0], optim_config) or encoders.is_frozen_encoder_param(
            names, optim_config.freeze_encoder_layers)):
      return "frozen"
    if names[0].startswith(QUANTIZER_PARAMS):
      return "quantizer"
    if has_decoder_group(optim_config) and names[0] not in encoders.ENCODER_COLLECTIONS:
      return "decoder"
    return "backbone"
  return jax.tree_util.tree_map_with_path(label, params)


def peak_learning_rates(optim_config):
  """Peak learning rate of each trained label of `param_labels`."""
  rates = {"backbone": float(optim_config.backbone_lr),
           "quantizer": float(optim_config.quantizer_lr)}
  if has_decoder_group(optim_config):
    rates["decoder"] = float(optim_config.decoder_lr)
  return rates


def decay_mask(params):
  """Weight decay on matrices only: not on biases, LayerNorm scales or the scalar gammas.

  Biases are told by name, not rank: attention's q/k/v biases are [heads, head_dim].
  """
  def decays(path, p):
    return p.ndim >= 2 and getattr(path[-1], "key", None) != "bias"
  return jax.tree_util.tree_map_with_path(decays, params)


def learning_rate_schedule(peak: float, warmup_steps: int, total_steps: int):
  """Linear warm-up to `peak`, then linear decay to 0 at `total_steps`."""
  warmup_steps = min(warmup_steps, max(total_steps - 1, 0))
  return optax.join_schedules(
      [optax.linear_schedule(0.0, peak, max(warmup_steps, 1)),
       optax.linear_schedule(peak, 0.0, max(total_steps - warmup_steps, 1))],
      [warmup_steps])


def make_optimizer(optim_config, total_steps: int) -> optax.GradientTransformation:
  """Global-norm clipping, then AdamW per parameter group."""
  def adamw(peak):
    return optax.adamw(learning_rate_schedule(peak, optim_config.warmup_steps, total_steps),
                       b1=optim_config.b1, b2=optim_config.b2,
                       weight_decay=optim_config.weight_decay, mask=decay_mask)
  transforms = {label: adamw(peak)
                for label, peak in peak_learning_rates(optim_config).items()}
  if _freezes_anything(optim_config):  # Only then: keeps the usual optimiser state tree.
    transforms["frozen"] = optax.set_to_zero()
  return optax.chain(
      optax.clip_by_global_norm(optim_config.grad_clip_norm),
      optax.multi_transform(transforms, lambda params: param_labels(params, optim_config)))


def gumbel_temperature(step, optim_config, total_steps: int):
  """Exponential annealing tau_start -> tau_end over training."""
  frac = jnp.clip(step / max(total_steps - 1, 1), 0.0, 1.0)
  return optim_config.tau_start * (optim_config.tau_end / optim_config.tau_start) ** frac

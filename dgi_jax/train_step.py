"""Train state and the pure DGI train step, for `jax.jit` (sharded batch) and `jax.pmap`."""

import functools
from typing import Any, Dict, Optional, Sequence, Tuple

import flax.struct
import jax
import jax.numpy as jnp
import optax

from dgi_jax import losses, optim
from dgi_jax.models import encoders
from dgi_jax.models.dgi import DGIModel, EncodedRequests

Batch = Dict[str, jax.Array]

# A frozen encoder's outputs, which a batch may carry in place of its tokens
# (`encoder_cache.EncoderCache.fill`): the step then runs no encoder.
ITEM_EMBEDDING = "item_embedding"  # float32 [B, d] z_base.
REQUEST_STATES = "request_states"  # [B, Lq, d] token states (float32 or bfloat16).
REQUEST_VECTOR = "request_vector"  # float32 [B, d] z_q.
REQUEST_MASK = "request_mask"  # bool [B, Lq].
# A frozen bottom's outputs (`optim.freeze_encoder_layers` = k of a BERT-family encoder's
# layers, `encoder_cache.BottomCache.fill`) in place of the tokens: the step runs the
# encoder's top layers from them.
ITEM_BOTTOM = "item_bottom"  # [B, Li, d] layer k's input for the items.
ITEM_BOTTOM_MASK = "item_bottom_mask"  # bool [B, Li].
REQUEST_BOTTOM = "request_bottom"  # [B, Lq, d] layer k's input for the requests.
REQUEST_BOTTOM_MASK = "request_bottom_mask"  # bool [B, Lq].


@flax.struct.dataclass
class TrainState:
  """Everything that changes during training (the run's rng is kept beside it)."""
  step: jax.Array  # int32 scalar: optimisation steps taken.
  params: Any  # The model's parameter tree (codebooks included, one copy).
  opt_state: Any  # optax state.
  # data.history_repr 'codes' / 'embedding': every item's SID int32 [N, m] or embedding
  # float32 [N, d], which requests read their history through (models/history.py);
  # recomputed from the params on a schedule, not by the optimiser. None for 'text'.
  history_table: Optional[jax.Array] = None


def create_train_state(params, optimizer: optax.GradientTransformation,
                       history_table: Optional[jax.Array] = None) -> TrainState:
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    opt_state=optimizer.init(params), history_table=history_table)


def gumbel_noise(rng: jax.Array, example_id: jax.Array,
                 codebook_sizes: Sequence[int]) -> list:
  """Per-example Gumbel(0, 1) noise, one [B, K_t] array per level.

  Each example's noise comes from `fold_in(rng, example_id)`, so it is the same whichever
  device (or how many devices) the example lands on.
  """
  def per_example(example):
    key = jax.random.fold_in(rng, example)
    return [jax.random.gumbel(jax.random.fold_in(key, t), (k,), jnp.float32)
            for t, k in enumerate(codebook_sizes)]
  return jax.vmap(per_example)(example_id)


def make_loss_and_grads(model: DGIModel, config, total_steps: int,
                        axis_name: Optional[str] = None):
  """Returns `loss_and_grads(params, batch, rng, step, history_table=None) -> (terms,
  grads, item_grads)`; `history_table` as `TrainState.history_table`.

  `terms` are the loss terms of the global batch; `grads` the gradient of `total` (both
  request and item paths); `item_grads` the item path's part for the encoder alone.
  Under `axis_name` (pmap) the results are already averaged over devices.
  """
  cfg = model.cfg
  deterministic = cfg.dropout_rate == 0.0
  item_tower = model.item_encoder_name
  item_tower_frozen = optim.is_frozen(item_tower, config.optim)
  bottom_layers = int(config.optim.freeze_encoder_layers)  # With ITEM_ / REQUEST_BOTTOM.
  if axis_name is None:
    gather = losses.identity_gather
  else:
    gather = functools.partial(jax.lax.all_gather, axis_name=axis_name, axis=0, tiled=True)

  def loss_and_grads(params, batch: Batch, rng: jax.Array, step: jax.Array,
                     history_table: Optional[jax.Array] = None):
    step_rng = jax.random.fold_in(rng, step)
    noise = gumbel_noise(jax.random.fold_in(step_rng, 0), batch["example_id"],
                         cfg.codebook_sizes)
    dropout_rng = jax.random.fold_in(step_rng, 1)
    offset = 0
    if axis_name is not None:
      dropout_rng = jax.random.fold_in(dropout_rng, jax.lax.axis_index(axis_name))
      offset = jax.lax.axis_index(axis_name) * batch["example_id"].shape[0]
    tau = optim.gumbel_temperature(step, config.optim, total_steps)
    rngs = {"dropout": dropout_rng}

    labels = optim.param_labels(params, config.optim)

    def loss_fn(params, item_encoder_params):
      # Frozen parameters enter as constants: no backward pass through frozen encoder
      # layers, and zero gradients that do not count in the clipping norm.
      params = _stop_frozen_gradients(params, labels)
      if REQUEST_STATES in batch:  # The encoder's outputs, read from its cache.
        request = EncodedRequests(batch[REQUEST_STATES], batch[REQUEST_VECTOR],
                                  batch[REQUEST_MASK])
        outputs = model.apply({"params": params}, batch[ITEM_EMBEDDING], request, noise,
                              tau, deterministic, rngs=rngs,
                              method=DGIModel.forward_from_encoded)
      else:
        item_encoder_params = _stop_frozen_gradients(item_encoder_params,
                                                     labels[item_tower])
        # The item path reads the encoder through its own argument, so its gradient (the
        # paper's Figure 3 signal) is separable from the request path's.
        item_params = {"params": dict(params, **{item_tower: item_encoder_params})}
        if ITEM_BOTTOM in batch:  # The frozen bottom's outputs, read from its cache.
          z_base = model.apply(item_params, batch[ITEM_BOTTOM], batch[ITEM_BOTTOM_MASK],
                               bottom_layers, deterministic, rngs=rngs,
                               method=DGIModel.embed_items_from_bottom)
        else:
          z_base = model.apply(item_params, batch["item_tokens"], deterministic, rngs=rngs,
                               method=DGIModel.embed_items)
        if item_tower_frozen:  # Its gradient would be discarded: skip the backward pass.
          z_base = jax.lax.stop_gradient(z_base)
        if REQUEST_BOTTOM in batch:
          request = model.apply({"params": params}, batch[REQUEST_BOTTOM],
                                batch[REQUEST_BOTTOM_MASK], bottom_layers, deterministic,
                                rngs=rngs, method=DGIModel.encode_requests_from_bottom)
          outputs = model.apply({"params": params}, z_base, request, noise, tau,
                                deterministic, rngs=rngs, method=DGIModel.forward_from_encoded)
        else:
          outputs = model.apply({"params": params}, z_base, batch["query_tokens"], noise,
                                tau, deterministic, batch.get("history"), history_table,
                                rngs=rngs, method=DGIModel.forward_from_item_embedding)
      terms = losses.dgi_losses(outputs, batch["item_index"], config.loss, cfg.geometry,
                                gather, offset)
      return terms["total"], terms

    (_, terms), (grads, item_grads) = jax.value_and_grad(
        loss_fn, argnums=(0, 1), has_aux=True)(params, params[item_tower])
    grads = dict(grads, **{item_tower: jax.tree.map(jnp.add, grads[item_tower], item_grads)})
    terms = dict(terms, tau=tau)
    if axis_name is not None:
      # Each device differentiates its own copy of the parameters: average the copies'
      # gradients (the loss is the per-device mean, and all_gather's transpose has already
      # routed the cross-device InfoNCE / diversity terms to the right device).
      terms, grads, item_grads = jax.lax.pmean((terms, grads, item_grads), axis_name)
    return terms, grads, item_grads

  return loss_and_grads


def _stop_frozen_gradients(params, labels):
  return jax.tree.map(lambda p, label: jax.lax.stop_gradient(p) if label == "frozen" else p,
                      params, labels)


def make_train_step(model: DGIModel, optimizer: optax.GradientTransformation, config,
                    total_steps: int, axis_name: Optional[str] = None):
  """Returns `train_step(state, batch, rng) -> (state, metrics)`.

  Args:
    model: the DGI model.
    optimizer: from `optim.make_optimizer`.
    config: the full config (loss weights, Gumbel temperature schedule, model switches).
    total_steps: length of the run (temperature annealing).
    axis_name: the pmap axis; None under `jax.jit`, where the batch is one global array.

  Batch fields: `item_tokens [B, Li]`, `query_tokens [B, Lq]` int32, `item_index [B]`,
  `example_id [B]` int32, and `history [B, H]` int32 (item indices, -1 padded; read
  with data.history_repr 'codes' / 'embedding'); or, with a frozen encoder's cache, the
  ITEM_EMBEDDING / REQUEST_STATES / REQUEST_VECTOR / REQUEST_MASK fields, or with a frozen
  bottom's cache the ITEM_BOTTOM / REQUEST_BOTTOM fields and their masks, in place of the
  two token arrays. The step's
  randomness is `fold_in(rng, state.step)`.
  """
  loss_and_grads = make_loss_and_grads(model, config, total_steps, axis_name)
  last_encoder_layer = encoders.last_layer_name(model.cfg)

  def train_step(state: TrainState, batch: Batch, rng: jax.Array) -> Tuple[TrainState, Dict]:
    terms, grads, item_grads = loss_and_grads(state.params, batch, rng, state.step,
                                              state.history_table)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    new_state = state.replace(step=state.step + 1,
                              params=optax.apply_updates(state.params, updates),
                              opt_state=opt_state)
    metrics = dict(terms, grad_norm=optax.tree.norm(grads),
                   item_encoder_last_layer_grad_norm=optax.tree.norm(
                       item_grads[last_encoder_layer]),
                   finite=jnp.isfinite(terms["total"]))
    return new_state, metrics

  return train_step

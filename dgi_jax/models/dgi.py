"""The DGI model: shared text encoder, residual quantizer, SID decoder with tied heads.

The top-level module is the single owner of the codebooks: the quantizer scores residuals
against them and, with `tie_heads`, the decoder's output heads are the same arrays
(symmetric weight sharing). There is no other copy in the parameter tree.
"""

from typing import Any, Dict, NamedTuple, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from dgi_jax.models import encoders, history as history_lib, quantizer
from dgi_jax.models.config import ModelConfig
from dgi_jax.models.transformer import EMBED_INIT, DecoderBlock, layer_norm

# Codewords start at roughly the norm of an encoder output (LayerNorm'd states, mean-pooled);
# k-means replaces them before training anyway.
CODEBOOK_INIT = nn.initializers.normal(stddev=1.0)


class SidDecoder(nn.Module):
  """Transformer decoder over the m SID positions, cross-attending to request tokens.

  With `cfg.decoder_identity_init` the level embeddings and every block's residual
  branches start at zero: the untrained decoder is `LayerNorm(inputs)`, so with residual
  inputs its logits are the quantizer's own scores of the request's residuals.
  """
  cfg: ModelConfig

  @nn.compact
  def __call__(self, inputs, memory, memory_mask, deterministic: bool = True):
    """inputs [B, n, d] or [B, G, n, d] (n <= m), memory [B, L, d], memory_mask [B, L]
    (True at real positions) -> hidden states of inputs' shape.

    With a group axis, the G sequences of request b (its beams) all read memory[b]: each
    request's memory is projected once, not G times (`transformer.cross_attend`).
    """
    cfg = self.cfg
    level_init = nn.initializers.zeros if cfg.decoder_identity_init else EMBED_INIT
    level_embed = self.param("level_embed", level_init, (cfg.num_levels, cfg.d_model))
    x = (inputs + level_embed[:inputs.shape[-2]]).astype(cfg.compute_dtype)
    memory = memory.astype(cfg.compute_dtype)
    mask = memory_mask[:, None, None, :]
    for i in range(cfg.decoder_layers):
      x = DecoderBlock(cfg, name=f"layers_{i}")(x, memory, mask, deterministic)
    return layer_norm(cfg, "ln_final")(x).astype(jnp.float32)


def teacher_forcing_inputs(z_q: jax.Array, prefix_vectors: jax.Array,
                           mode: str = "sum") -> jax.Array:
  """Decoder inputs from the request vector and the prefix code vectors.

  [B, d], [B, n, d] -> [B, n + 1, d]:
    'sum' (the paper's figure): `x_1 = z_q`, `x_t = z_q + sum_{j<t} v_j`;
    'residual': `x_1 = z_q`, `x_t = z_q - sum_{j<t} v_j`, the part of the request the
      prefix has not explained, which level t's codebook quantizes on the item side.
  """
  partial_sums = jnp.cumsum(prefix_vectors, axis=1)
  if mode == "residual":
    partial_sums = -partial_sums
  zeros = jnp.zeros_like(z_q)[:, None]
  return z_q[:, None] + jnp.concatenate([zeros, partial_sums], axis=1)


class EncodedRequests(NamedTuple):
  """The encoder's view of a batch of requests: what the decoder cross-attends to."""
  states: jax.Array  # [B, L', d] token states, then one per history item (if any).
  z_q: jax.Array  # [B, d] the pooled request vector.
  mask: jax.Array  # bool [B, L'], True at real tokens and items.


class DGIModel(nn.Module):
  """Differentiable Geometric Indexing. See docs/DESIGN.md "Model specification"."""
  cfg: ModelConfig

  @property
  def item_encoder_name(self) -> str:
    """Top-level parameter collection of the item tower ('encoder' when shared)."""
    return "item_encoder" if self.cfg.separate_item_encoder else "encoder"

  def setup(self):
    cfg = self.cfg
    self.encoder = encoders.make_encoder(cfg)
    # One tower for requests and items (DGI), or a second one for items.
    self.item_encoder = (encoders.make_encoder(cfg) if cfg.separate_item_encoder
                         else self.encoder)
    self.decoder = SidDecoder(cfg)
    if cfg.history_items:
      self.history_embed = history_lib.HistoryEmbedding(cfg)
    self.codebooks = [self.param(f"codebook_{t}", CODEBOOK_INIT, (k, cfg.d_model))
                      for t, k in enumerate(cfg.codebook_sizes)]
    gamma_init = nn.initializers.constant(cfg.gamma_init)
    self.gamma_quantizer = self.param("gamma_quantizer", gamma_init, ())
    self.gamma_decoder = (self.gamma_quantizer if cfg.share_gamma
                          else self.param("gamma_decoder", gamma_init, ()))
    if cfg.tie_heads:
      self.heads = self.codebooks
    else:
      self.heads = [self.param(f"head_{t}", CODEBOOK_INIT, (k, cfg.d_model))
                    for t, k in enumerate(cfg.codebook_sizes)]

  # ------------------------------------------------------------------ encoders
  def embed_items(self, item_tokens, deterministic: bool = True):
    """[B, Li] item text tokens -> z_base [B, d] (unit length if normalize_item_embedding).

    Unit length keeps the residual quantizer scale-free, as its cosine scores already are:
    with the raw pooled vector (norm ~sqrt(d)) the squared-distance L_Local is ~100x the
    other terms, dominates the clipped gradient, and collapses the item embeddings.
    """
    return self._item_vector(self.item_encoder(item_tokens, deterministic)[1])

  def _item_vector(self, pooled):
    if self.cfg.normalize_item_embedding:
      return quantizer.l2_normalize(pooled)
    return pooled

  def encoder_bottom(self, tokens, num_layers: int):
    """tokens [B, L] -> (x [B, L, d], mask bool [B, L]): the shared encoder's embeddings
    and its bottom `num_layers` layers, which the step would run unchanged while they are
    frozen (`encoder_cache.py` computes them once). BERT-family encoders only."""
    return self.encoder(tokens, True, layers=(0, num_layers))

  def embed_items_from_bottom(self, hidden, mask, first_layer: int,
                              deterministic: bool = True):
    """`embed_items` from `encoder_bottom(item_tokens, first_layer)`'s (hidden [B, Li, d],
    mask [B, Li]) -> z_base [B, d]."""
    top = (first_layer, self.cfg.encoder_spec.num_layers)
    return self._item_vector(self.item_encoder(None, deterministic, layers=top,
                                               hidden=(hidden, mask))[1])

  def encode_requests_from_bottom(self, hidden, mask, first_layer: int,
                                  deterministic: bool = True) -> EncodedRequests:
    """`encode_requests` of text requests from `encoder_bottom(query_tokens,
    first_layer)`'s (hidden [B, Lq, d], mask [B, Lq])."""
    top = (first_layer, self.cfg.encoder_spec.num_layers)
    states, z_q = self.encoder(None, deterministic, layers=top, hidden=(hidden, mask))
    return EncodedRequests(states, z_q, mask)

  def encode_requests(self, query_tokens, history=None, history_table=None,
                      deterministic: bool = True) -> EncodedRequests:
    """Request tokens [B, Lq] (and, with `history_repr` 'codes' / 'embedding', history
    item indices [B, H], -1 padded, read through `history_table`, see models/history.py)
    -> EncodedRequests(states [B, Lq (+ H), d], z_q [B, d], mask [B, Lq (+ H)])."""
    cfg = self.cfg
    extra = None
    if cfg.history_items:
      if history is None or history_table is None:
        raise ValueError(f"history_repr={cfg.history_repr!r}: requests need their "
                         "history item indices and the history table")
      vectors = history_lib.lookup(history, history_table, self.codebooks, cfg.history_repr,
                                   cfg.history_code_gradient)
      extra = (self.history_embed(vectors, history), history_lib.history_mask(history))
    states, z_q = self.encoder(query_tokens, deterministic, extra)
    mask = query_tokens != cfg.pad_token_id
    if extra is not None:
      mask = jnp.concatenate([mask, extra[1]], axis=1)
    return EncodedRequests(states, z_q, mask)

  # ------------------------------------------------------------------ decoder
  def _decoder_inputs(self, z_q, prefix_vectors):
    """The decoder's inputs (see `teacher_forcing_inputs`). Residual inputs take the
    request vector on the item embeddings' scale (unit length when those are), so that
    subtracting codewords means what it means in the quantizer."""
    if self.cfg.decoder_inputs == "residual" and self.cfg.normalize_item_embedding:
      z_q = quantizer.l2_normalize(z_q)
    return teacher_forcing_inputs(z_q, prefix_vectors, self.cfg.decoder_inputs)

  def decode(self, z_q, request_states, request_mask, prefix_vectors,
             deterministic: bool = True):
    """Decoder logits for levels 0..n given n prefix code vectors [B, n, d].

    `request_states` [B, L, d] and `request_mask` [B, L] are `encode_requests`' states
    and mask. Returns a list of n + 1 arrays, level t's logits [B, K_t].
    """
    inputs = self._decoder_inputs(z_q, prefix_vectors)
    hidden = self.decoder(inputs, request_states, request_mask, deterministic)
    return [quantizer.similarity(hidden[:, t], self.heads[t], self.gamma_decoder,
                                 self.cfg.geometry)
            for t in range(inputs.shape[1])]

  def prefix_logits(self, z_q, request_states, request_mask, prefix_codes):
    """Inference: logits of the next level given hard prefix codes.

    z_q [B, d], request_states [B, L, d] and request_mask [B, L] as `encode_requests`
    gives them, and either
      prefix_codes [B, t] -> logits [B, K_t], one prefix per request, or
      prefix_codes [B, G, t] -> logits [B, G, K_t], G prefixes per request (the beams):
        they share the request's states, whose cross-attention keys and values are then
        computed once per request instead of once per prefix.
    The decoder's inputs are the hard codewords of the prefix.
    """
    t = prefix_codes.shape[-1]
    hidden = self._prefix_hidden(z_q, request_states, request_mask, prefix_codes)
    return quantizer.similarity(hidden[..., t, :], self.heads[t], self.gamma_decoder,
                                self.cfg.geometry)

  def sid_log_probs(self, z_q, request_states, request_mask, sids):
    """Teacher-forced log P(c_t | request, c_<t) of whole SIDs, every level in one causal
    decoder pass (`prefix_logits` at each prefix length gives the same logits).

    z_q, request_states, request_mask as in `prefix_logits`; sids int [B, G, m], G SIDs
    per request sharing its states. Returns float32 [B, G, m]; each level's softmax runs
    over its whole codebook (not over the codes the index holds). Their sum over m is
    log P(SID | request).
    """
    hidden = self._prefix_hidden(z_q, request_states, request_mask, sids[..., :-1])
    levels = []
    for t in range(sids.shape[-1]):
      logits = quantizer.similarity(hidden[..., t, :], self.heads[t], self.gamma_decoder,
                                    self.cfg.geometry).astype(jnp.float32)  # [B, G, K_t]
      levels.append(jnp.take_along_axis(jax.nn.log_softmax(logits), sids[..., t:t + 1],
                                        axis=-1)[..., 0])
    return jnp.stack(levels, axis=-1)

  def _prefix_hidden(self, z_q, request_states, request_mask, prefix_codes):
    """The decoder's hidden states [B, t + 1, d] (or [B, G, t + 1, d]) after the hard
    prefix codes [B, t] (or [B, G, t]); position j predicts level j."""
    grouped = prefix_codes.ndim == 3
    batch, t = prefix_codes.shape[0], prefix_codes.shape[-1]
    rows = prefix_codes.shape[1] if grouped else 1  # G
    codes = prefix_codes.reshape(batch * rows, t)  # [B * G, t], request-major.
    vectors = [self.codebooks[j][codes[:, j]] for j in range(t)]
    prefix = (jnp.stack(vectors, axis=1) if vectors
              else jnp.zeros((codes.shape[0], 0, z_q.shape[-1]), z_q.dtype))
    # The decoder's inputs are per prefix; only z_q is repeated (a [B * G, d] copy).
    inputs = self._decoder_inputs(jnp.repeat(z_q, rows, axis=0), prefix.astype(jnp.float32))
    if grouped:
      inputs = inputs.reshape(batch, rows, t + 1, -1)  # [B, G, t + 1, d]
    return self.decoder(inputs, request_states, request_mask, True)

  # ------------------------------------------------------------------ quantizer
  def hard_codes(self, z_base):
    """Semantic IDs of item embeddings [B, d] -> [B, m] (argmax codes, hard residuals)."""
    return quantizer.hard_quantize(z_base, self.codebooks, self.gamma_quantizer,
                                   self.cfg.geometry)

  def first_code_scores(self, z):
    """The quantizer's level-1 scores of vectors [B, d] -> [B, K_1] (argmax: `hard_codes`'
    first code)."""
    return quantizer.similarity(z.astype(jnp.float32), self.codebooks[0].astype(jnp.float32),
                                self.gamma_quantizer, self.cfg.geometry)

  def get_codebooks(self):
    """The raw codebook weights, one [K_t, d] array per level."""
    return list(self.codebooks)

  # ------------------------------------------------------------------ training forward
  def forward_from_item_embedding(self, z_base, query_tokens,
                                  gumbel_noise: Sequence[jax.Array], tau,
                                  deterministic: bool = True,
                                  history: Optional[jax.Array] = None,
                                  history_table: Optional[jax.Array] = None
                                  ) -> Dict[str, Any]:
    """Soft quantization of `z_base` and soft teacher-forced decoding of the request.

    Split from `embed_items` so a train step can tell the item path's gradient from the
    request path's, although both go through the one shared encoder. `history` and
    `history_table` as in `encode_requests`.
    """
    request = self.encode_requests(query_tokens, history, history_table, deterministic)
    return self.forward_from_encoded(z_base, request, gumbel_noise, tau, deterministic)

  def forward_from_encoded(self, z_base, request: EncodedRequests,
                           gumbel_noise: Sequence[jax.Array], tau,
                           deterministic: bool = True) -> Dict[str, Any]:
    """`forward_from_item_embedding` after the encoder: `z_base` [B, d] and the encoded
    requests, computed in the step or read from a frozen encoder's cache
    (`encoder_cache.py`)."""
    cfg = self.cfg
    z_q = request.z_q
    quant = quantizer.soft_quantize(z_base, self.codebooks, self.gamma_quantizer,
                                    gumbel_noise, tau, cfg.geometry, cfg.grad_path)
    prefix = jnp.stack(quant.code_vectors[:-1], axis=1)
    if cfg.grad_path == "frozen":
      prefix = jax.lax.stop_gradient(prefix)
    logits = self.decode(z_q, request.states, request.mask, prefix, deterministic)
    return dict(z_base=z_base, z_q=z_q, logits=logits, **quant._asdict())

  def __call__(self, item_tokens, query_tokens, gumbel_noise, tau,
               deterministic: bool = True, history=None, history_table=None):
    """Full training forward: item tokens -> z_base -> quantizer -> decoder outputs."""
    z_base = self.embed_items(item_tokens, deterministic)
    return self.forward_from_item_embedding(z_base, query_tokens, gumbel_noise, tau,
                                            deterministic, history, history_table)

"""PyTorch reference of the DGI model (training forward pass and losses).

Written from the method description and the "Model specification" in `docs/DESIGN.md`,
independently of the Flax model, so that a disagreement points at a mistake in either.
Float32, no dropout (parity is checked with dropout off). Gumbel noise is an input.

`state_dict` layout (`V` vocab, `L` position rows, `d` width, `F` MLP width, `m` levels,
`K_t` codebook size of level t; `i` encoder layer, `j` decoder layer). Linear weights
are `[out, in]` (PyTorch convention), applied as `x @ W.T + b`.

| key                                              | shape      | meaning                       |
|--------------------------------------------------|------------|-------------------------------|
| encoder.token_embed.weight                       | [V, d]     | token embedding (row 0 = pad) |
| encoder.pos_embed                                | [L, d]     | learned positions             |
| encoder.layers.i.attn_norm.{weight,bias}         | [d]        | LN before self-attention      |
| encoder.layers.i.attn.{q,k,v}_proj.weight        | [d, d]     | projections; out row = h*dh+c |
| encoder.layers.i.attn.{q,k,v}_proj.bias          | [d]        |                               |
| encoder.layers.i.attn.out_proj.{weight,bias}     | [d, d],[d] | output projection             |
| encoder.layers.i.mlp_norm.{weight,bias}          | [d]        | LN before the MLP             |
| encoder.layers.i.mlp.fc1.{weight,bias}           | [F, d],[F] | first MLP layer (exact GELU)  |
| encoder.layers.i.mlp.fc2.{weight,bias}           | [d, F],[d] | second MLP layer              |
| encoder.final_norm.{weight,bias}                 | [d]        | LN giving the token states H  |
| codebooks.t                                      | [K_t, d]   | raw codebook W_t of level t   |
| gamma_q, gamma_d (or gamma if share_gamma)       | []         | scales of the cosine logits   |
| decoder.level_embed                              | [m, d]     | learned level embedding       |
| decoder.layers.j.self_attn_norm.{weight,bias}    | [d]        | LN before causal self-attn    |
| decoder.layers.j.self_attn.*                     | as encoder | causal self-attention         |
| decoder.layers.j.cross_attn_norm.{weight,bias}   | [d]        | LN before cross-attention     |
| decoder.layers.j.cross_attn.*                    | as encoder | attends to H_q (key mask)     |
| decoder.layers.j.mlp_norm / mlp.fc1 / mlp.fc2    | as encoder | MLP block                     |
| decoder.final_norm.{weight,bias}                 | [d]        | LN giving h                   |
| heads.t (only when tie_heads is false)           | [K_t, d]   | separate output head U_t      |
| history_embed.projection.{weight,bias}           | [d, d],[d] | item vector -> input position |
| history_embed.layer_norm.{weight,bias}           | [d]        | LN after the projection       |
| history_embed.recency_embed                      | [R, d]     | R = max(max_history, 1)       |

With `tie_heads` the decoder heads ARE `codebooks.t`; there is no second copy. The
`history_embed.*` rows exist only with `history_repr` 'codes' / 'embedding'.

History items (`history_repr` 'codes' / 'embedding'; `docs/DESIGN.md`, "Model
specification", "History items"): a request's history is item indices `[B, H]`, oldest
first, right-padded with -1, read through a history table the caller passes in (int32
`[N, m]` SIDs, or float32 `[N, d]` item embeddings). Item `i`'s vector is
`sum_t codebooks.t[sid[i, t]]` ('codes': through the codebook parameters, so the
history's gradient reaches them) or the table row ('embedding'). Each item becomes one
encoder input position `LN(W v + b) + recency_embed[r]`, `r` counting from the newest
item (0), appended after the encoder's embedding stage (scratch: token + position
embeddings; BERT: the embeddings' LayerNorm output; T5: the token embedding). The
attention, the pooling and the decoder's cross-attention mask cover the real tokens and
the real items.

Pre-trained encoder (`encoder` 'bert' or 't5'): the `encoder.*` rows above are replaced by
`transformers`' own `BertModel` (no pooler) or `T5EncoderModel`, built from the checkpoint's
`EncoderSpec` (no hub access), eager attention, dropout 0, in eval mode. Its keys are
`encoder.` + the Hugging Face names (`encoder.embeddings.word_embeddings.weight`,
`encoder.encoder.layer.i.attention.self.query.weight`, ...; T5 has its token table under
both `encoder.shared.weight` and `encoder.encoder.embed_tokens.weight`, one tied tensor).
The token states are HF's `last_hidden_state` and the pooled vector their mean over the
non-padding tokens, as for the scratch encoder. History positions enter BERT between
`embeddings` and `encoder` (the additive attention mask built as `BertModel` builds it),
and T5 as `inputs_embeds` (the token embeddings with the history positions appended).
"""

import dataclasses
import json
import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn
import torch.nn.functional as F

from dgi_jax.models.config import ENCODERS, GEOMETRIES, GRAD_PATHS, HISTORY_REPRS
from dgi_jax.models.pretrained import EncoderSpec
from dgi_jax.parity import torch_losses

LN_EPS = 1e-6  # Spec: every LayerNorm uses eps 1e-6 (PyTorch's default is 1e-5).


@dataclasses.dataclass(frozen=True)
class ReferenceConfig:
  """Hyper-parameters of the reference (the model and loss sections of the config)."""

  vocab_size: int
  max_len: int  # Rows of the position table: max(max_item_len, max_query_len).
  d_model: int
  num_heads: int
  mlp_dim: int
  encoder_layers: int
  decoder_layers: int
  codebook_sizes: Tuple[int, ...]
  gamma_init: float
  share_gamma: bool
  grad_path: str
  tie_heads: bool
  geometry: str
  normalize_item_embedding: bool
  decoder_inputs: str  # 'sum' (z_q + prefix) or 'residual' (z_q - prefix, z_q normalised).
  loss_weights: Tuple[Tuple[str, float], ...]  # (term, weight) pairs, see torch_losses.
  beta: float
  infonce_temperature: float
  div_eps: float
  div_probs: str  # 'clean' (softmax(s / T)) or 'gumbel' (p) as the diversity usage.
  div_temperature: float  # T of 'clean'; 0 = the Gumbel temperature tau.
  encoder: str = "scratch"  # 'scratch' (the blocks above) or a pre-trained 'bert' / 't5'.
  # The pre-trained encoder's architecture (None for 'scratch'); d_model is its width.
  encoder_spec: Optional[EncoderSpec] = None
  # How a request reads its history (`data.history_repr`): 'text' (inside the request
  # tokens) or one input position per item, 'codes' / 'embedding' (module docstring).
  history_repr: str = "text"
  max_history: int = 0  # History positions (`data.max_history`): rows of recency_embed.
  history_code_gradient: bool = True  # 'codes': the history's gradient reaches the codebooks.

  def __post_init__(self):
    if self.encoder not in ENCODERS:
      raise ValueError(f"encoder={self.encoder!r}; expected one of {ENCODERS}")
    if self.history_repr not in HISTORY_REPRS:
      raise ValueError(f"history_repr={self.history_repr!r}; expected one of "
                       f"{HISTORY_REPRS}")
    if self.encoder != "scratch":
      _check_spec(self.encoder, self.encoder_spec, self.d_model)
    if self.grad_path not in GRAD_PATHS:
      raise ValueError(f"grad_path={self.grad_path!r}; expected one of {GRAD_PATHS}")
    if self.geometry not in GEOMETRIES:
      raise ValueError(f"geometry={self.geometry!r}; expected one of {GEOMETRIES}")
    if self.d_model % self.num_heads:
      raise ValueError(f"d_model={self.d_model} not divisible by num_heads={self.num_heads}")

  @classmethod
  def from_config(cls, config) -> "ReferenceConfig":
    """Reads the `data`, `model` and `loss` sections of an ml_collections config."""
    m, loss = config.model, config.loss
    spec_json = m.encoder_spec
    return cls(
        vocab_size=int(config.data.vocab_size),
        max_len=max(int(config.data.max_item_len), int(config.data.max_query_len)),
        d_model=int(m.d_model), num_heads=int(m.num_heads), mlp_dim=int(m.mlp_dim),
        encoder_layers=int(m.encoder_layers), decoder_layers=int(m.decoder_layers),
        codebook_sizes=tuple(int(k) for k in m.codebook_sizes),
        gamma_init=float(m.gamma_init), share_gamma=bool(m.share_gamma),
        grad_path=str(m.grad_path), tie_heads=bool(m.tie_heads), geometry=str(m.geometry),
        normalize_item_embedding=bool(m.normalize_item_embedding),
        decoder_inputs=str(m.decoder_inputs),
        loss_weights=tuple(torch_losses.loss_weights(loss).items()),
        beta=float(loss.beta), infonce_temperature=float(loss.infonce_temperature),
        div_eps=float(loss.div_eps), div_probs=str(loss.div_probs),
        div_temperature=float(loss.div_temperature),
        encoder=str(m.encoder),
        encoder_spec=EncoderSpec.from_dict(json.loads(spec_json)) if spec_json else None,
        history_repr=str(config.data.history_repr),
        max_history=int(config.data.max_history),
        history_code_gradient=bool(m.history_code_gradient))

  @property
  def history_items(self) -> bool:
    """Whether requests read their history as one input position per item."""
    return self.history_repr != "text"


def _check_spec(encoder: str, spec: Optional[EncoderSpec], d_model: int) -> None:
  """Raises ValueError unless `spec` describes a pre-trained encoder the reference builds."""
  if spec is None:
    raise ValueError(f"encoder={encoder!r} needs its encoder_spec (model.encoder_spec; "
                     "encoders.resolve_pretrained fills it from model.pretrained)")
  if spec.kind != encoder:
    raise ValueError(f"encoder={encoder!r} but the spec is of kind {spec.kind!r}")
  if spec.hidden_size != d_model:
    raise ValueError(f"d_model={d_model} differs from the encoder's width {spec.hidden_size}")
  # The DGI batches pad with token 0, and the reference masks tokens != 0.
  if spec.pad_token_id != 0:
    raise ValueError(f"pad_token_id={spec.pad_token_id}: the reference pads with 0")
  if spec.pooling != "mean":
    raise ValueError(f"pooling={spec.pooling!r}: the reference pools by masked mean only")
  if spec.kind == "bert" and spec.head_dim * spec.num_heads != spec.hidden_size:
    raise ValueError(f"BERT head_dim {spec.head_dim} x {spec.num_heads} heads != "
                     f"hidden_size {spec.hidden_size}")


class Attention(nn.Module):
  """Multi-head attention with biased q/k/v/out projections and a boolean key mask."""

  def __init__(self, d_model: int, num_heads: int):
    super().__init__()
    self.num_heads = num_heads
    self.q_proj = nn.Linear(d_model, d_model)
    self.k_proj = nn.Linear(d_model, d_model)
    self.v_proj = nn.Linear(d_model, d_model)
    self.out_proj = nn.Linear(d_model, d_model)

  def forward(self, x: torch.Tensor, kv: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """x `[B, Lq, d]` attends to kv `[B, Lk, d]`; mask broadcasts to `[B, Lq, Lk]`."""
    b, lq, d = x.shape
    lk, h = kv.shape[1], self.num_heads
    dh = d // h
    q = self.q_proj(x).view(b, lq, h, dh).transpose(1, 2)
    k = self.k_proj(kv).view(b, lk, h, dh).transpose(1, 2)
    v = self.v_proj(kv).view(b, lk, h, dh).transpose(1, 2)
    logits = (q @ k.transpose(-1, -2)) / math.sqrt(dh)
    # Spec: masked logits take the dtype's most negative value (not -inf), so a fully
    # masked row gives a uniform softmax instead of NaN.
    logits = logits.masked_fill(~mask[:, None], torch.finfo(logits.dtype).min)
    out = torch.softmax(logits, dim=-1) @ v
    return self.out_proj(out.transpose(1, 2).reshape(b, lq, d))


class Mlp(nn.Module):
  """`fc2(gelu(fc1(x)))` with the exact (erf) GELU."""

  def __init__(self, d_model: int, mlp_dim: int):
    super().__init__()
    self.fc1 = nn.Linear(d_model, mlp_dim)
    self.fc2 = nn.Linear(mlp_dim, d_model)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return self.fc2(F.gelu(self.fc1(x), approximate="none"))


class EncoderBlock(nn.Module):
  """Pre-LN block: `x += MHA(LN(x))`, `x += MLP(LN(x))`."""

  def __init__(self, d_model: int, num_heads: int, mlp_dim: int):
    super().__init__()
    self.attn_norm = nn.LayerNorm(d_model, eps=LN_EPS)
    self.attn = Attention(d_model, num_heads)
    self.mlp_norm = nn.LayerNorm(d_model, eps=LN_EPS)
    self.mlp = Mlp(d_model, mlp_dim)

  def forward(self, x: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
    y = self.attn_norm(x)
    x = x + self.attn(y, y, key_mask[:, None, :])
    return x + self.mlp(self.mlp_norm(x))


Extra = Tuple[torch.Tensor, torch.Tensor]  # (embeddings [B, H, d], bool mask [B, H]).


def append_inputs(x: torch.Tensor, mask: torch.Tensor, extra: Optional[Extra]):
  """Inputs `[B, L, d]`, bool mask `[B, L]` -> both with `extra`'s H positions appended."""
  if extra is None:
    return x, mask
  embeddings, extra_mask = extra
  return torch.cat([x, embeddings], dim=1), torch.cat([mask, extra_mask], dim=1)


class Encoder(nn.Module):
  """Shared text encoder: returns token states `H`, the float mask and the masked mean."""

  def __init__(self, cfg: ReferenceConfig):
    super().__init__()
    d = cfg.d_model
    self.token_embed = nn.Embedding(cfg.vocab_size, d)
    self.pos_embed = nn.Parameter(torch.empty(cfg.max_len, d))
    self.layers = nn.ModuleList(
        [EncoderBlock(d, cfg.num_heads, cfg.mlp_dim) for _ in range(cfg.encoder_layers)])
    self.final_norm = nn.LayerNorm(d, eps=LN_EPS)
    nn.init.normal_(self.token_embed.weight, std=0.02)
    nn.init.normal_(self.pos_embed, std=0.02)

  def forward(self, tokens: torch.Tensor, extra: Optional[Extra] = None):
    """tokens `[B, L]` (0 = padding) -> (H `[B, L', d]`, mask `[B, L']`, pooled `[B, d]`).

    `extra` (embeddings `[B, H, d]`, bool mask `[B, H]`) are input positions appended after
    the token + position embeddings; then `L' = L + H`.
    """
    x, key_mask = append_inputs(self.token_embed(tokens) + self.pos_embed[:tokens.shape[1]],
                                tokens != 0, extra)
    for layer in self.layers:
      x = layer(x, key_mask)
    states = self.final_norm(x)
    mask = key_mask.to(states.dtype)
    return states, mask, masked_mean(states, mask)


def masked_mean(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
  """states `[B, L, d]`, float mask `[B, L]` (1 = real token) -> mean over real tokens `[B, d]`."""
  return torch.sum(states * mask[..., None], dim=1) / torch.clamp(
      torch.sum(mask, dim=1, keepdim=True), min=1.0)


def sentence_vectors(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
  """A sentence-transformers embedding: states `[B, L, d]`, float mask `[B, L]` -> the
  mean over real tokens, L2-normalised (its Pooling then Normalize modules) `[B, d]`."""
  return torch.nn.functional.normalize(masked_mean(states, mask), dim=-1)


def _transformers():
  import transformers  # pylint: disable=g-import-not-at-top  # Only pre-trained runs need it.
  import transformers.masking_utils  # pylint: disable=g-import-not-at-top,unused-import
  return transformers


def hf_config(spec: EncoderSpec):
  """The `transformers` config of `spec` (built from its fields: no hub, no directory).

  Dropout is 0 and attention 'eager' (the textbook softmax(QK^T) V, not a fused kernel).
  """
  transformers = _transformers()
  if spec.kind == "bert":
    return transformers.BertConfig(
        vocab_size=spec.vocab_size, hidden_size=spec.hidden_size,
        num_hidden_layers=spec.num_layers, num_attention_heads=spec.num_heads,
        intermediate_size=spec.intermediate_size, hidden_act="gelu",
        max_position_embeddings=spec.max_positions, type_vocab_size=spec.type_vocab_size,
        layer_norm_eps=spec.layer_norm_eps, pad_token_id=spec.pad_token_id,
        position_embedding_type="absolute", hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0, attn_implementation="eager")
  return transformers.T5Config(
      vocab_size=spec.vocab_size, d_model=spec.hidden_size, d_kv=spec.head_dim,
      d_ff=spec.intermediate_size, num_layers=spec.num_layers, num_heads=spec.num_heads,
      relative_attention_num_buckets=spec.relative_attention_num_buckets,
      relative_attention_max_distance=spec.relative_attention_max_distance,
      layer_norm_epsilon=spec.layer_norm_eps, feed_forward_proj=spec.activation,
      pad_token_id=spec.pad_token_id, dropout_rate=0.0, attn_implementation="eager")


def pretrained_encoder(spec: EncoderSpec) -> nn.Module:
  """`BertModel` (without pooler) or `T5EncoderModel` of `spec`, randomly initialised, eval."""
  transformers = _transformers()
  config = hf_config(spec)
  if spec.kind == "bert":
    model = transformers.BertModel(config, add_pooling_layer=False)
  else:
    model = transformers.T5EncoderModel(config)
  return model.eval()


def encode_pretrained(model: nn.Module, tokens: torch.Tensor, extra: Optional[Extra] = None):
  """tokens `[B, L]` (0 = padding) -> (H `[B, L', d]`, mask `[B, L']`, pooled `[B, d]`).

  `extra` (embeddings `[B, H, d]`, bool mask `[B, H]`) are input positions appended after
  the embedding stage (`L' = L + H`): BERT's `embeddings` output (after its LayerNorm,
  so they get no position or token-type embedding), T5's token embeddings.
  """
  if extra is None:
    key_mask = tokens != 0
    states = model(input_ids=tokens, attention_mask=key_mask.long()).last_hidden_state
  elif isinstance(model, _transformers().BertModel):
    x, key_mask = append_inputs(model.embeddings(input_ids=tokens), tokens != 0, extra)
    # The additive [B, 1, L', L'] mask BertModel.forward itself builds from a [B, L'] one.
    additive = _transformers().masking_utils.create_bidirectional_mask(
        config=model.config, inputs_embeds=x, attention_mask=key_mask.long())
    states = model.encoder(x, attention_mask=additive).last_hidden_state
  else:  # T5: the relative position bias then spans all L' positions.
    x, key_mask = append_inputs(model.shared(tokens), tokens != 0, extra)
    states = model(inputs_embeds=x, attention_mask=key_mask.long()).last_hidden_state
  mask = key_mask.to(states.dtype)
  return states, mask, masked_mean(states, mask)


class DecoderBlock(nn.Module):
  """Pre-LN block: causal self-attention, cross-attention to `H_q`, MLP."""

  def __init__(self, d_model: int, num_heads: int, mlp_dim: int):
    super().__init__()
    self.self_attn_norm = nn.LayerNorm(d_model, eps=LN_EPS)
    self.self_attn = Attention(d_model, num_heads)
    self.cross_attn_norm = nn.LayerNorm(d_model, eps=LN_EPS)
    self.cross_attn = Attention(d_model, num_heads)
    self.mlp_norm = nn.LayerNorm(d_model, eps=LN_EPS)
    self.mlp = Mlp(d_model, mlp_dim)

  def forward(self, x, memory, memory_mask):
    m = x.shape[1]
    causal = torch.tril(torch.ones(m, m, dtype=torch.bool, device=x.device))[None]
    y = self.self_attn_norm(x)
    x = x + self.self_attn(y, y, causal)
    x = x + self.cross_attn(self.cross_attn_norm(x), memory, memory_mask[:, None, :])
    return x + self.mlp(self.mlp_norm(x))


class Decoder(nn.Module):
  """SID decoder over `m` level positions; adds the level embedding to its inputs."""

  def __init__(self, cfg: ReferenceConfig):
    super().__init__()
    d = cfg.d_model
    self.level_embed = nn.Parameter(torch.empty(len(cfg.codebook_sizes), d))
    self.layers = nn.ModuleList(
        [DecoderBlock(d, cfg.num_heads, cfg.mlp_dim) for _ in range(cfg.decoder_layers)])
    self.final_norm = nn.LayerNorm(d, eps=LN_EPS)
    nn.init.normal_(self.level_embed, std=0.02)

  def forward(self, inputs, memory, memory_mask):
    """inputs `[B, m, d]`, memory `H_q` `[B, L', d]` (request tokens, then history items),
    bool memory_mask `[B, L']` -> `[B, m, d]`."""
    x = inputs + self.level_embed[None]
    for layer in self.layers:
      x = layer(x, memory, memory_mask)
    return self.final_norm(x)


def recency(history: torch.Tensor) -> torch.Tensor:
  """Item indices `[B, H]` (oldest first, -1 padded on the right) -> long `[B, H]`: a
  position's distance from the newest item (0), and 0 at padding."""
  mask = history >= 0
  count = mask.sum(dim=1, keepdim=True)
  slot = torch.arange(history.shape[1], device=history.device)[None]
  return torch.where(mask, count - 1 - slot, torch.zeros_like(history))


class HistoryEmbedding(nn.Module):
  """Item vectors `[B, H, d]` -> input positions `LN(W v + b) + recency_embed[r]`."""

  def __init__(self, cfg: ReferenceConfig):
    super().__init__()
    d = cfg.d_model
    self.projection = nn.Linear(d, d)
    self.layer_norm = nn.LayerNorm(d, eps=LN_EPS)
    self.recency_embed = nn.Parameter(torch.empty(max(cfg.max_history, 1), d))
    nn.init.normal_(self.recency_embed, std=0.02)

  def forward(self, vectors: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
    """vectors `[B, H, d]`, history `[B, H]` -> `[B, H, d]`."""
    # Histories longer than the table share its last (oldest) row.
    r = torch.clamp(recency(history), max=self.recency_embed.shape[0] - 1)
    return self.layer_norm(self.projection(vectors)) + self.recency_embed[r]


class DGIReference(nn.Module):
  """The DGI model: encoder, residual quantizer, decoder with codebook-tied heads."""

  def __init__(self, cfg: ReferenceConfig):
    super().__init__()
    self.cfg = cfg
    d = cfg.d_model
    # Named `encoder` either way, so the state_dict keys are `encoder.` + its own names.
    self.encoder = (Encoder(cfg) if cfg.encoder == "scratch"
                    else pretrained_encoder(cfg.encoder_spec))
    self.codebooks = nn.ParameterList(
        [nn.Parameter(torch.randn(k, d) / math.sqrt(d)) for k in cfg.codebook_sizes])
    if cfg.share_gamma:
      self.gamma = nn.Parameter(torch.tensor(cfg.gamma_init))
    else:
      self.gamma_q = nn.Parameter(torch.tensor(cfg.gamma_init))
      self.gamma_d = nn.Parameter(torch.tensor(cfg.gamma_init))
    self.decoder = Decoder(cfg)
    if not cfg.tie_heads:
      self.heads = nn.ParameterList(
          [nn.Parameter(torch.randn(k, d) / math.sqrt(d)) for k in cfg.codebook_sizes])
    if cfg.history_items:
      self.history_embed = HistoryEmbedding(cfg)

  def encode(self, tokens: torch.Tensor, extra: Optional[Extra] = None):
    """tokens `[B, L]` -> (H `[B, L', d]`, mask `[B, L']`, pooled `[B, d]`), either encoder;
    `extra` (embeddings `[B, H, d]`, bool mask `[B, H]`) appended as input positions."""
    if self.cfg.encoder == "scratch":
      return self.encoder(tokens, extra)
    return encode_pretrained(self.encoder, tokens, extra)

  def history_inputs(self, history: torch.Tensor, table: torch.Tensor) -> Extra:
    """The encoder's extra inputs of a batch of histories.

    Args:
      history: long `[B, H]` item indices, oldest first, -1 padded on the right.
      table: 'codes': long / int `[N, m]` SIDs; 'embedding': float `[N, d]` embeddings.

    Returns:
      (embeddings `[B, H, d]`, bool mask `[B, H]`, True at real items).
    """
    # Padding reads item 0; the mask keeps it out of attention and pooling.
    rows = table[torch.clamp(history, min=0)]
    if self.cfg.history_repr == "codes":
      vectors = sum(w[rows[..., t].long()] for t, w in enumerate(self.codebooks))
      if not self.cfg.history_code_gradient:
        vectors = vectors.detach()
    else:
      vectors = rows.to(self.history_embed.projection.weight.dtype)
    return self.history_embed(vectors, history), history >= 0

  def _gammas(self):
    if self.cfg.share_gamma:
      return self.gamma, self.gamma
    return self.gamma_q, self.gamma_d

  def _logits(self, x: torch.Tensor, w: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """Scaled cosine `gamma * cos(x, w_k)` or dot `x . w_k`; x `[B, d]`, w `[K, d]`."""
    if self.cfg.geometry == "cosine":
      return gamma * (torch_losses.normalize(x) @ torch_losses.normalize(w).T)
    return x @ w.T

  def quantize(self, z_base: torch.Tensor, gumbel_noise: Sequence[torch.Tensor], tau: float):
    """Residual quantization with Gumbel soft assignments (training path).

    Args:
      z_base: `[B, d]` pooled item embeddings (`r_0`).
      gumbel_noise: per level `[B, K_t]` Gumbel(0, 1) samples.
      tau: Gumbel-softmax temperature.

    Returns:
      Dict of per-level lists: `codes` `[B]`, `probs` `[B, K_t]`, `usage` `[B, K_t]`
      (noise-free `softmax(s / T)`, T = div_temperature or tau), `code_vectors` `zt_t`, `residuals` `r_{t-1}`,
      `hard_codewords` `W_t[c_t]` (all `[B, d]` but codes/probs/usage).
    """
    gamma_q, _ = self._gammas()
    out = {k: [] for k in ("codes", "probs", "usage", "code_vectors", "residuals",
                           "hard_codewords")}
    r = z_base
    for w, g in zip(self.codebooks, gumbel_noise):
      scores = self._logits(r, w, gamma_q)
      codes = torch.argmax(scores, dim=-1)  # Noise-free: hard codes are the NTP targets.
      probs = torch.softmax((scores + g) / tau, dim=-1)
      hard = w[codes]
      path = self.cfg.grad_path
      if path in ("gumbel_soft", "frozen"):
        zt = probs @ w
      elif path == "ste":
        zt = r + (hard - r).detach()
      else:  # gumbel_st: hard one-hot of the noisy scores, soft gradient.
        y = F.one_hot(torch.argmax(scores + g, dim=-1), w.shape[0]).to(probs.dtype)
        zt = (y + probs - probs.detach()) @ w
      usage_t = self.cfg.div_temperature or tau
      level = dict(codes=codes, probs=probs, usage=torch.softmax(scores / usage_t, dim=-1),
                   code_vectors=zt, residuals=r, hard_codewords=hard)
      for key, value in level.items():
        out[key].append(value)
      r = r - zt
    return out

  def decoder_inputs(self, z_q: torch.Tensor, code_vectors: Sequence[torch.Tensor]):
    """`x_1 = z_q`, `x_t = z_q + sum_{j<t} v_j` -> `[B, m, d]` (soft teacher forcing).

    Residual inputs: `x_t = z_q - sum_{j<t} v_j`, with z_q unit length when the item
    embeddings are.
    """
    residual = self.cfg.decoder_inputs == "residual"
    if residual and self.cfg.normalize_item_embedding:
      z_q = torch_losses.normalize(z_q)
    inputs, prefix = [], torch.zeros_like(z_q)
    for zt in code_vectors:
      inputs.append(z_q + prefix)
      v = zt.detach() if self.cfg.grad_path == "frozen" else zt
      prefix = prefix - v if residual else prefix + v
    return torch.stack(inputs, dim=1)

  def head_logits(self, h: torch.Tensor) -> List[torch.Tensor]:
    """Decoder states `[B, m, d]` -> per-level logits `[B, K_t]` (heads tied or not)."""
    _, gamma_d = self._gammas()
    heads = self.codebooks if self.cfg.tie_heads else self.heads
    return [self._logits(h[:, t], u, gamma_d) for t, u in enumerate(heads)]

  def forward(self, item_tokens: torch.Tensor, query_tokens: torch.Tensor,
              item_index: torch.Tensor, gumbel_noise: Sequence[torch.Tensor],
              tau: float, history: Optional[torch.Tensor] = None,
              history_table: Optional[torch.Tensor] = None) -> Dict[str, object]:
    """Training forward pass and losses.

    Args:
      item_tokens: `[B, Li]` long, target item text (0 = padding).
      query_tokens: `[B, Lq]` long, the request text (`query [SEP] history` with
        `history_repr` 'text', else the query alone).
      item_index: `[B]` long, target item ids (for InfoNCE duplicate masking).
      gumbel_noise: per level `[B, K_t]` float Gumbel(0, 1) noise.
      tau: Gumbel-softmax temperature.
      history: `[B, H]` long history item indices, -1 padded ('codes' / 'embedding' only).
      history_table: the items' SIDs `[N, m]` or embeddings `[N, d]` (`history_inputs`).

    Returns:
      Dict with the scalar terms `ntp`, `global`, `local`, `infonce`, `div`, `total`;
      `logits` (per level `[B, K_t]`), `codes` (per level `[B]`), `probs`, `z_base`, `z_q`.
    """
    cfg = self.cfg
    _, _, z_base = self.encode(item_tokens)
    if cfg.normalize_item_embedding:
      z_base = torch_losses.normalize(z_base)
    extra = None
    if cfg.history_items:
      if history is None or history_table is None:
        raise ValueError(f"history_repr={cfg.history_repr!r}: requests need their history "
                         "item indices and the history table")
      extra = self.history_inputs(history, history_table)
    h_q, mask_q, z_q = self.encode(query_tokens, extra)
    quant = self.quantize(z_base, gumbel_noise, tau)
    h = self.decoder(self.decoder_inputs(z_q, quant["code_vectors"]), h_q, mask_q > 0)
    logits = self.head_logits(h)
    terms = {
        "ntp": torch_losses.ntp_loss(logits, quant["codes"]),
        "global": torch_losses.global_loss(z_base, quant["code_vectors"], cfg.geometry),
        "local": torch_losses.local_loss(quant["residuals"], quant["hard_codewords"],
                                         cfg.beta),
        "infonce": torch_losses.infonce_loss(z_q, z_base, item_index,
                                             cfg.infonce_temperature),
        "div": torch_losses.div_loss(
            quant["usage" if cfg.div_probs == "clean" else "probs"], cfg.div_eps),
    }
    terms["total"] = torch_losses.total_loss(terms, dict(cfg.loss_weights))
    terms.update(logits=logits, codes=quant["codes"], probs=quant["probs"],
                 z_base=z_base, z_q=z_q)
    return terms

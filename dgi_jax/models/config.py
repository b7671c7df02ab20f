"""Model hyper-parameters as a frozen dataclass (built once from the ml_collections config)."""

import dataclasses
import json
from typing import Optional, Tuple

import jax.numpy as jnp

from dgi_jax.models.pretrained import EncoderSpec

ENCODERS = ("scratch", "bert", "t5")
GRAD_PATHS = ("gumbel_soft", "ste", "gumbel_st", "frozen")
GEOMETRIES = ("cosine", "dot")
DENSE_GRADIENTS = ("auto", "flat", "autodiff")  # models/matmul.py.
ATTENTION_GRADIENTS = ("auto", "written", "autodiff")  # models/attention.py.
DECODER_INPUTS = ("sum", "residual")
HISTORY_REPRS = ("text", "codes", "embedding")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Static model hyper-parameters; see `configs/default.py` for each field's meaning."""

  vocab_size: int
  max_len: int  # Rows of the position table: max(max_item_len, max_query_len).
  d_model: int = 128
  num_heads: int = 4
  mlp_dim: int = 512
  encoder_layers: int = 2
  decoder_layers: int = 2
  dropout_rate: float = 0.0
  codebook_sizes: Tuple[int, ...] = (64, 64, 64)
  gamma_init: float = 30.0
  share_gamma: bool = False
  grad_path: str = "gumbel_soft"
  tie_heads: bool = True
  geometry: str = "cosine"
  dtype: str = "float32"
  separate_item_encoder: bool = False
  normalize_item_embedding: bool = True
  decoder_inputs: str = "residual"
  decoder_identity_init: bool = True
  encoder: str = "scratch"
  # The pre-trained encoder's architecture (None for 'scratch'); d_model equals its width.
  encoder_spec: Optional[EncoderSpec] = None
  # How a request reads its history (`data.history_repr`): 'text' (titles in the request
  # tokens, no extra input) or one input position per item, 'codes' / 'embedding'.
  history_repr: str = "text"
  max_history: int = 0  # History positions of 'codes' / 'embedding' (`data.max_history`).
  # 'codes': whether the history's gradient reaches the codebooks it reads.
  history_code_gradient: bool = True
  dense_gradient: str = "auto"  # The Dense layers' backward pass (models/matmul.py).
  attention_gradient: str = "auto"  # Attention's backward pass (models/attention.py).

  def __post_init__(self):
    if self.encoder not in ENCODERS:
      raise ValueError(f"model.encoder={self.encoder!r}; expected one of {ENCODERS}")
    if (self.encoder == "scratch") != (self.encoder_spec is None):
      raise ValueError(f"model.encoder={self.encoder!r} needs "
                       + ("no pre-trained checkpoint" if self.encoder == "scratch"
                          else "model.pretrained (a Hugging Face-format directory)"))
    if self.encoder_spec is not None:
      if self.encoder_spec.kind != self.encoder:
        raise ValueError(f"model.encoder={self.encoder!r} but model.pretrained holds a "
                         f"{self.encoder_spec.kind!r} checkpoint")
      if self.d_model != self.encoder_spec.hidden_size:
        raise ValueError(f"model.d_model={self.d_model} differs from the pre-trained "
                         f"encoder's width {self.encoder_spec.hidden_size}")
    if self.grad_path not in GRAD_PATHS:
      raise ValueError(f"model.grad_path={self.grad_path!r}; expected one of {GRAD_PATHS}")
    if self.geometry not in GEOMETRIES:
      raise ValueError(f"model.geometry={self.geometry!r}; expected one of {GEOMETRIES}")
    if self.decoder_inputs not in DECODER_INPUTS:
      raise ValueError(f"model.decoder_inputs={self.decoder_inputs!r}; expected one of "
                       f"{DECODER_INPUTS}")
    if self.dense_gradient not in DENSE_GRADIENTS:
      raise ValueError(f"model.dense_gradient={self.dense_gradient!r}; expected one of "
                       f"{DENSE_GRADIENTS}")
    if self.attention_gradient not in ATTENTION_GRADIENTS:
      raise ValueError(f"model.attention_gradient={self.attention_gradient!r}; expected one "
                       f"of {ATTENTION_GRADIENTS}")
    if self.history_repr not in HISTORY_REPRS:
      raise ValueError(f"data.history_repr={self.history_repr!r}; expected one of "
                       f"{HISTORY_REPRS}")
    if self.d_model % self.num_heads:
      raise ValueError(f"model.d_model={self.d_model} is not divisible by "
                       f"model.num_heads={self.num_heads}")
    if not self.codebook_sizes or min(self.codebook_sizes) < 2:
      raise ValueError(f"model.codebook_sizes={self.codebook_sizes}: need >= 1 level, K >= 2")

  @property
  def num_levels(self) -> int:
    return len(self.codebook_sizes)

  @property
  def history_items(self) -> bool:
    """Whether requests read their history as one input position per item."""
    return self.history_repr != "text"

  @property
  def pad_token_id(self) -> int:
    """The token id that pads requests and items (a pre-trained encoder's own; 0 for the
    scratch encoder's WordPiece)."""
    return self.encoder_spec.pad_token_id if self.encoder_spec else 0

  @property
  def compute_dtype(self):
    return jnp.dtype(self.dtype)

  @classmethod
  def from_config(cls, config) -> "ModelConfig":
    """Builds the model config from the full ml_collections config (model + data fields).

    A pre-trained encoder's architecture comes from `model.encoder_spec`, which
    `encoders.resolve_pretrained` fills in from `model.pretrained` before training.
    """
    # Every config has every field: configs/default.py defines them all, and configs read
    # back from checkpoints written before a field existed were upgraded by
    # `trained_run.config_from_json` (its LEGACY_VALUES).
    apart = ("vocab_size", "max_len", "encoder_spec", "history_repr", "max_history")  # Below.
    kwargs = {f.name: config.model[f.name] for f in dataclasses.fields(cls)
              if f.name not in apart}
    kwargs["codebook_sizes"] = tuple(int(k) for k in kwargs["codebook_sizes"])
    spec_json = config.model.encoder_spec
    spec = EncoderSpec.from_dict(json.loads(spec_json)) if spec_json else None
    if kwargs["encoder"] != "scratch" and spec is None:
      raise ValueError(f"model.encoder={kwargs['encoder']!r}: the encoder's architecture "
                       "is not resolved yet (set model.pretrained; training reads it)")
    max_len = max(config.data.max_item_len, config.data.max_query_len)
    if spec is not None and spec.max_positions and max_len > spec.max_positions:
      raise ValueError(f"data.max_item_len / max_query_len = {max_len} exceed the "
                       f"pre-trained encoder's {spec.max_positions} positions")
    return cls(vocab_size=spec.vocab_size if spec else config.data.vocab_size,
               max_len=max_len, encoder_spec=spec,
               history_repr=config.data.history_repr,
               max_history=int(config.data.max_history), **kwargs)

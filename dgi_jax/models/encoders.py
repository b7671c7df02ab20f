"""The shared text encoder of a DGI model: scratch, or a pre-trained BERT / T5 checkpoint.

Every encoder maps tokens [B, L] (0 = padding) to (states [B, L, d], pooled [B, d]), so
the rest of the model does not know which one it runs. A pre-trained run goes through
two steps, both explicit (nothing data-dependent happens inside the model):
  1. `resolve_pretrained(config)` reads the checkpoint's architecture into the config
     (`model.encoder_spec`, and the widths that follow from it), so the config saved with
     every checkpoint describes the model without the original directory;
  2. `load_pretrained_params(params, cfg, path)` puts the checkpoint's weights into a
     freshly initialised parameter tree (the codebooks, gammas and the SID decoder keep
     their initialisation; k-means then runs on the pre-trained item embeddings).
"""

import json
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dgi_jax.models import attention, matmul
from dgi_jax.models import pretrained
from dgi_jax.models.bert import BertEncoder
from dgi_jax.models.config import ModelConfig
from dgi_jax.models.t5 import T5Encoder
from dgi_jax.models.transformer import TextEncoder

_PRETRAINED_ENCODERS = {"bert": BertEncoder, "t5": T5Encoder}
# Parameter collections of the encoder towers (the item tower exists only when separate).
ENCODER_COLLECTIONS = ("encoder", "item_encoder")


def make_encoder(cfg: ModelConfig) -> nn.Module:
  """A new encoder module as `cfg.encoder` says (named by the attribute it is bound to)."""
  if cfg.encoder == "scratch":
    return TextEncoder(cfg)
  return _PRETRAINED_ENCODERS[cfg.encoder](
      cfg.encoder_spec, dtype=cfg.compute_dtype, dropout_rate=cfg.dropout_rate,
      dot_general=matmul.dense_dot_general(cfg.dense_gradient),
      written_attention=attention.uses_written_gradient(cfg.attention_gradient))


def resolve_pretrained(config):
  """Fills the config's encoder fields from `model.pretrained`'s config.json.

  Sets `model.encoder_spec` (the architecture as JSON), `model.d_model` (the codebooks
  and the SID decoder take the encoder's width), `model.encoder_layers` and
  `data.vocab_size`. A config whose spec is already filled (a resumed or evaluated run)
  is returned unchanged, so a moved or deleted checkpoint directory does not matter then.

  Raises:
    ValueError: `model.encoder` and `model.pretrained` do not go together.
    pretrained.PretrainedError: the directory cannot be read as that kind of encoder.
  """
  model = config.model
  if model.encoder == "scratch":
    if model.pretrained:
      raise ValueError(f"model.pretrained={model.pretrained!r} is set but model.encoder is "
                       "'scratch'; set model.encoder to 'bert' or 't5'")
    return config
  if model.encoder_spec:
    return config
  if not model.pretrained:
    raise ValueError(f"model.encoder={model.encoder!r} needs --config.model.pretrained (a "
                     "Hugging Face-format directory with config.json and the weights)")
  spec = pretrained.read_spec(model.pretrained)
  if spec.kind != model.encoder:
    raise ValueError(f"model.encoder={model.encoder!r} but {model.pretrained} holds a "
                     f"{spec.kind!r} checkpoint")
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.model.encoder_spec = json.dumps(spec.to_dict(), sort_keys=True)
    config.model.d_model = spec.hidden_size
    config.model.encoder_layers = spec.num_layers
    config.data.vocab_size = spec.vocab_size
  config.lock()
  return config


def load_pretrained_params(params, cfg: ModelConfig, path: str):
  """`params` with every encoder tower's weights replaced by the checkpoint's.

  Args:
    params: A full DGI parameter tree (e.g. from `init`).
    cfg: The model config (`encoder_spec` set).
    path: The Hugging Face-format directory.
  Raises:
    pretrained.PretrainedError: the checkpoint's tensors do not fit the encoder.
  """
  loaded = pretrained.load_params(path, cfg.encoder_spec)
  params = dict(params)
  for name in ENCODER_COLLECTIONS:
    if name not in params:
      continue
    _check_same_tree(params[name], loaded, path)
    # Each tower gets its own buffers: one buffer in two leaves of the donated train
    # state fails ("donate the same buffer twice").
    params[name] = jax.tree.map(lambda target, w: jnp.asarray(np.asarray(w), target.dtype),
                                params[name], loaded)
  return params


def _check_same_tree(expected, loaded, path) -> None:
  """Raises PretrainedError unless `loaded` has `expected`'s leaves and shapes."""
  want = {jax.tree_util.keystr(k): v.shape
          for k, v in jax.tree_util.tree_leaves_with_path(expected)}
  got = {jax.tree_util.keystr(k): np.shape(v)
         for k, v in jax.tree_util.tree_leaves_with_path(loaded)}
  if want.keys() != got.keys():
    missing, extra = sorted(want.keys() - got.keys()), sorted(got.keys() - want.keys())
    raise pretrained.PretrainedError(
        f"{path}: the loaded encoder does not match the model: missing {missing[:5]}, "
        f"unexpected {extra[:5]}")
  wrong = [f"{k} {got[k]} (model {want[k]})" for k in sorted(want) if want[k] != got[k]]
  if wrong:
    raise pretrained.PretrainedError(f"{path}: shape mismatch: {', '.join(wrong[:5])}")


def last_layer_name(cfg: ModelConfig) -> str:
  """Name of the encoder's last transformer layer in the parameter tree."""
  if cfg.encoder == "scratch":
    return f"layers_{cfg.encoder_layers - 1}"
  return f"layer_{cfg.encoder_spec.num_layers - 1}"


_EMBEDDING_NAMES = ("embeddings", "token_embed", "pos_embed")
_LAYER_NAME = re.compile(r"layers?_(\d+)$")


def is_frozen_encoder_param(path, num_layers: int) -> bool:
  """Whether a parameter path lies in an encoder's embeddings or its bottom `num_layers`
  layers (pre-trained: `embeddings`, `layer_i`; scratch: `token_embed`, `pos_embed`,
  `layers_i`). `path` is a tuple of names from the top of the parameter tree."""
  if num_layers <= 0 or len(path) < 2 or path[0] not in ENCODER_COLLECTIONS:
    return False
  if path[1] in _EMBEDDING_NAMES:
    return True
  match = _LAYER_NAME.match(path[1])
  return bool(match) and int(match.group(1)) < num_layers

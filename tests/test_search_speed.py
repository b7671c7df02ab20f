"""The search's savings give the results of the plain formulation: the beams of a request
share its cross-attention keys and values (`DGIModel.prefix_logits` on a group of
prefixes), each batch is cut to its longest request (`retrieval.trim_requests`), and on a
small catalogue the ranking's cosines come from one product with every item vector
(`decoding.rank_items`' cosines_from).

The reference is the search as it was first written: the request's states repeated once
per beam (`decoding.expand_to_beams`), one prefix per row, at the full request width.
Models have random parameters (their decoder's residual branches are not zero, as the
identity initialisation would leave them, so the cross-attention counts in the scores).
"""

import functools
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import load_config
from dgi_jax import decoding, index, retrieval
from dgi_jax.data import pipeline
from dgi_jax.models import quantizer
from dgi_jax.models.config import ModelConfig
from dgi_jax.models.dgi import DGIModel
from dgi_jax.models.pretrained import EncoderSpec

WIDTH, QUERY_LEN, MAX_HISTORY, NUM_ITEMS = 16, 24, 20, 120
SIZES = (6, 5, 4)
BEAM, K = 5, 10
BERT = EncoderSpec(kind="bert", vocab_size=50, hidden_size=WIDTH, num_layers=1,
                   num_heads=2, head_dim=8, intermediate_size=32, max_positions=64,
                   type_vocab_size=2, pooling="cls")
T5 = EncoderSpec(kind="t5", vocab_size=50, hidden_size=WIDTH, num_layers=2, num_heads=2,
                 head_dim=8, intermediate_size=32, activation="relu", layer_norm_eps=1e-6,
                 relative_attention_num_buckets=8, relative_attention_max_distance=16)


def _model(history_repr="text", spec=None) -> DGIModel:
  return DGIModel(ModelConfig(
      vocab_size=50, max_len=QUERY_LEN, d_model=WIDTH, num_heads=2, mlp_dim=32,
      encoder_layers=1, decoder_layers=2, codebook_sizes=SIZES,
      encoder=spec.kind if spec else "scratch", encoder_spec=spec,
      history_repr=history_repr, max_history=MAX_HISTORY if history_repr != "text" else 0))


def _random_params(model: DGIModel, seed=0):
  """Random values of the model's parameter shapes (the initialisers aside: compiling
  them costs seconds on CPU), with gammas that separate the scores."""
  cfg = model.cfg
  items = jnp.ones((2, 8), jnp.int32)
  tokens = jnp.ones((2, QUERY_LEN), jnp.int32)
  noise = [jnp.zeros((2, k)) for k in SIZES]
  history = table = None
  if cfg.history_items:
    history = jnp.zeros((2, MAX_HISTORY), jnp.int32)
    table = (jnp.zeros((NUM_ITEMS, len(SIZES)), jnp.int32) if cfg.history_repr == "codes"
             else jnp.zeros((NUM_ITEMS, WIDTH)))
  shapes = jax.eval_shape(functools.partial(model.init, deterministic=True),
                          jax.random.key(0), items, tokens, noise, 1.0,
                          history=history, history_table=table)["params"]
  rng = np.random.default_rng(seed)
  params = jax.tree.map(lambda s: rng.normal(0, 0.5, s.shape).astype(s.dtype), shapes)
  for name in ("gamma_quantizer", "gamma_decoder"):
    params[name] = np.float32(8.0)
  return jax.tree.map(jnp.asarray, params)


def _retriever(model: DGIModel, params, seed=0) -> retrieval.Retriever:
  """A Retriever over a catalogue of NUM_ITEMS items (no dataset, no tokenizer) whose
  index holds random SIDs and random unit item vectors: a random model quantizes its
  items to a handful of SIDs, and their vectors are too alike for a ranking test."""
  rng = np.random.default_rng(seed)
  tokens = rng.integers(1, 50, (NUM_ITEMS, 8)).astype(np.int32)
  run_data = types.SimpleNamespace(
      tokenizer=None, catalogue_tokens=tokens,
      dataset=types.SimpleNamespace(item_ids=[f"it{i}" for i in range(NUM_ITEMS)],
                                    item_texts=[f"item {i}" for i in range(NUM_ITEMS)],
                                    train_popularity=np.zeros(NUM_ITEMS, np.int64)))
  r = retrieval.Retriever(model, params, run_data, load_config("tiny"))
  sids = np.stack([rng.integers(0, k, NUM_ITEMS) for k in SIZES], axis=1).astype(np.int32)
  vectors = rng.normal(size=(NUM_ITEMS, WIDTH)).astype(np.float32)
  r.sids, r.item_embeddings = sids, vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
  # As `Retriever._append` builds the index from them.
  r.tables = index.build_prefix_tables(r.sids, SIZES)
  r.inverted_index = index.build_inverted_index(r.sids)
  r._device_embeddings = jnp.asarray(r.item_embeddings)  # pylint: disable=protected-access
  if model.cfg.history_items:
    r._device_history_table = jnp.asarray(  # pylint: disable=protected-access
        r.sids if model.cfg.history_repr == "codes" else r.item_embeddings)
  return r


def _requests(batch, first_token=None, seed=0):
  """(query tokens int32 [batch, QUERY_LEN], history int32 [batch, MAX_HISTORY]): at most
  5 query tokens and 6 history items, so both parts trim to 8 columns; row 0 has an
  empty query (a history item), row 1 no history. `first_token` starts every query
  (a [CLS]), so no query is empty."""
  rng = np.random.default_rng(seed)
  lengths = rng.integers(1, 6, batch)
  lengths[0], lengths[1] = 0, 3
  tokens = np.zeros((batch, QUERY_LEN), np.int32)
  for row, n in enumerate(lengths):
    tokens[row, :n] = rng.integers(3, 50, n)
  if first_token is not None:
    tokens[:, 0] = first_token
  counts = rng.integers(1, 7, batch)
  counts[1] = 0
  history = pipeline.pad_rows([rng.integers(0, NUM_ITEMS, n) for n in counts], MAX_HISTORY)
  return tokens, history


@functools.partial(jax.jit, static_argnames=("model", "beam_size", "k"))
def _repeated_states_search(model, params, tables, inverted, item_emb, query_tokens,
                            history, history_table, *, beam_size, k):
  """The reference: `retrieval._search` with the request's states repeated per beam."""
  apply = functools.partial(model.apply, {"params": params})
  request = apply(query_tokens, history, history_table, method=DGIModel.encode_requests)
  rep = lambda x: decoding.expand_to_beams(x, beam_size)  # noqa: E731
  z_q, states, mask = rep(request.z_q), rep(request.states), rep(request.mask)

  def tokens_to_logits(level, prefix):
    del level
    return apply(z_q, states, mask, prefix, method=DGIModel.prefix_logits)

  beams = decoding.beam_search(tokens_to_logits, query_tokens.shape[0], beam_size, tables,
                               model.cfg.codebook_sizes)
  items, scores, cosines = decoding.rank_items(
      beams, inverted, quantizer.l2_normalize(request.z_q), item_emb, k)
  return retrieval.SearchResult(items=items, beam_scores=scores, cosines=cosines,
                                beams=beams)


def _reference(r: retrieval.Retriever, tokens, history):
  return jax.device_get(_repeated_states_search(
      r.model, r.params, r.tables, r.inverted_index, r.device_item_embeddings,
      jnp.asarray(tokens), *r.history_args(history), beam_size=BEAM, k=K))


def _search(r: retrieval.Retriever, tokens, history, trim: bool):
  r.trim_padding = trim
  try:
    return jax.device_get(r.search(tokens, BEAM, K, history))
  finally:
    r.trim_padding = True


def _assert_same_results(result, expected):
  np.testing.assert_array_equal(result.items, expected.items)
  np.testing.assert_array_equal(result.beams.sequences, expected.beams.sequences)
  np.testing.assert_allclose(result.beam_scores, expected.beam_scores, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(result.cosines, expected.cosines, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(result.beams.scores, expected.beams.scores, rtol=1e-5,
                             atol=1e-5)


# ------------------------------------------------------------------ shared keys/values
def test_grouped_prefix_logits_equal_the_repeated_states():
  model = _model()
  params = _random_params(model)
  rng = np.random.default_rng(1)
  batch, group, length = 3, 4, 10
  z_q = jnp.asarray(rng.normal(size=(batch, WIDTH)), jnp.float32)
  states = jnp.asarray(rng.normal(size=(batch, length, WIDTH)), jnp.float32)
  mask = jnp.asarray(np.arange(length)[None] < np.array([[10], [4], [1]]))
  logits = jax.jit(functools.partial(model.apply, {"params": params},
                                     method=DGIModel.prefix_logits))
  rep = lambda x: jnp.repeat(x, group, axis=0)  # noqa: E731
  codes = np.stack([rng.integers(0, k, (batch, group)) for k in SIZES], axis=-1)
  for t in range(len(SIZES)):
    prefix = jnp.asarray(codes[..., :t], jnp.int32)  # [batch, group, t]
    grouped = logits(z_q, states, mask, prefix)
    assert grouped.shape == (batch, group, SIZES[t])
    repeated = logits(rep(z_q), rep(states), rep(mask), prefix.reshape(batch * group, t))
    np.testing.assert_allclose(grouped, repeated.reshape(grouped.shape), rtol=1e-5,
                               atol=1e-5)
    assert np.ptp(np.asarray(grouped)) > 1.0  # Scores that could tell a wrong state.


@pytest.mark.parametrize("history_repr", ["text", "codes", "embedding"])
def test_search_returns_what_the_repeated_states_search_returns(history_repr):
  model = _model(history_repr)
  r = _retriever(model, _random_params(model))
  tokens, history = _requests(16)
  batches = [(tokens, history, 8, 8)]  # (tokens, history, trimmed widths)
  if history_repr == "text":  # The history is not read: row 0 needs a query.
    tokens[0, :2] = 7
    batches = [(tokens, history, 8, None)]
  else:  # And queries that are all empty (history alone): no token column at all.
    only_history = history.copy()
    only_history[1, 0] = 3
    batches.append((np.zeros_like(tokens), only_history, 0, 8))
  for tokens, history, query_width, history_width in batches:
    trimmed, hist = r.search_inputs(tokens, history)[:2]
    assert trimmed.shape[1] == query_width
    assert (hist.shape[1] if hist is not None else None) == history_width
    expected = _reference(r, tokens, history)
    assert (expected.items[:, 0] >= 0).all()
    # Request-dependent scores, far apart on the tolerance's scale.
    assert np.ptp(expected.beams.scores[:, 0]) > 1e-2
    # Full width: the shared keys and values alone; trimmed: both savings.
    _assert_same_results(_search(r, tokens, history, trim=False), expected)
    _assert_same_results(_search(r, tokens, history, trim=True), expected)


# ------------------------------------------------------------------ trimmed requests
def test_trim_requests_cuts_trailing_padding_to_bucketed_widths():
  tokens = np.zeros((3, 64), np.int32)
  tokens[0, :9] = 5
  tokens[2, :2] = 5
  history = np.full((3, 20), -1, np.int32)
  history[1, :3] = 7
  trimmed, hist = retrieval.trim_requests(tokens, history, pad_id=0)
  assert trimmed.shape == (3, 16) and hist.shape == (3, 8)
  np.testing.assert_array_equal(trimmed, tokens[:, :16])
  np.testing.assert_array_equal(hist, history[:, :8])
  # T5: the tokens keep their width (the relative bias spans tokens and history).
  trimmed, hist = retrieval.trim_requests(tokens, history, pad_id=0, trim_query=False)
  assert trimmed.shape == (3, 64) and hist.shape == (3, 8)
  # A batch with a request that has no real position at all is not trimmed.
  trimmed, hist = retrieval.trim_requests(tokens, np.full((3, 20), -1, np.int32), pad_id=0)
  assert trimmed.shape == (3, 64) and hist.shape == (3, 20)
  # Empty queries: no token column at all, unless the encoder may pool position 0.
  items = np.full((3, 20), 4, np.int32)
  trimmed, hist = retrieval.trim_requests(np.zeros((3, 64), np.int32), items, pad_id=0)
  assert trimmed.shape == (3, 0) and hist.shape == (3, 20)
  trimmed, _ = retrieval.trim_requests(np.zeros((3, 64), np.int32), items, pad_id=0,
                                       empty_query=False)
  assert trimmed.shape == (3, 8)
  # History as text: the tokens alone; widths are capped at the full width.
  tokens[1, :40] = 3
  trimmed, hist = retrieval.trim_requests(tokens, None, pad_id=0)
  assert trimmed.shape == (3, 64) and hist is None
  tokens[1, 17:] = 0
  assert retrieval.trim_requests(tokens, None, pad_id=0)[0].shape == (3, 32)
  assert [retrieval.bucket_width(n, 20) for n in (0, 1, 8, 9, 16, 17, 20)] == [
      0, 8, 8, 16, 16, 20, 20]
  # The encoder cache's finer buckets: multiples of 8.
  assert retrieval.trim_requests(tokens, None, pad_id=0, multiple_of=8)[0].shape == (3, 24)
  assert [retrieval.bucket_width(n, 36, multiple_of=8) for n in (0, 1, 8, 9, 17, 33)] == [
      0, 8, 8, 16, 24, 36]


@pytest.mark.parametrize("spec", [BERT, T5], ids=["bert_cls", "t5"])
def test_trimmed_pretrained_encoder_search_equals_the_full_width_one(spec):
  # BERT: tokens and history trimmed (absolute positions of the tokens kept, items after
  # them); its 'cls' pooling reads position 0, so the tokens keep at least 8 columns even
  # where every query is empty. T5: the history alone.
  model = _model("codes", spec)
  r = _retriever(model, _random_params(model))
  for tokens, history in (_requests(8, first_token=2, seed=2), _requests(8, seed=3)):
    trimmed, hist = r.search_inputs(tokens, history)[:2]
    assert hist.shape[1] == 8
    assert trimmed.shape[1] == (8 if spec.kind == "bert" else QUERY_LEN)
    _assert_same_results(_search(r, tokens, history, trim=True),
                         _search(r, tokens, history, trim=False))


def test_a_batch_with_an_empty_request_searches_at_full_width():
  # An empty request's all-masked attention averages over every column: trimming would
  # change its results, so its batch keeps the full width (and the reference's results).
  model = _model("codes")
  r = _retriever(model, _random_params(model))
  tokens, history = _requests(8)
  tokens[1], history[1] = 0, -1
  trimmed, hist = r.search_inputs(tokens, history)[:2]
  assert trimmed.shape == tokens.shape and hist.shape == history.shape
  _assert_same_results(_search(r, tokens, history, trim=True), _reference(r, tokens, history))


# ------------------------------------------------------------------ ranking's cosines
@pytest.mark.parametrize("ranking", ["beam", "cosine", "blend"])
def test_cosines_from_the_catalogue_rank_as_the_gathered_ones(ranking):
  rng = np.random.default_rng(4)
  sizes, batch, num_items, d = (3, 2, 2), 4, 200, 8  # 12 SIDs: buckets of ~17 items.
  sids = np.stack([rng.integers(0, k, num_items) for k in sizes], axis=1)
  tables, inverted = index.build_prefix_tables(sids, sizes), index.build_inverted_index(sids)
  logits = [jnp.asarray(rng.normal(size=(batch * BEAM, k)), jnp.float32) for k in sizes]
  beams = decoding.beam_search(lambda level, prefix: logits[level], batch, BEAM, tables,
                               sizes)
  unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)  # noqa: E731
  query_emb = jnp.asarray(unit(rng.normal(size=(batch, d))), jnp.float32)
  item_emb = jnp.asarray(unit(rng.normal(size=(num_items, d))), jnp.float32)
  rank = jax.jit(decoding.rank_items, static_argnums=(4, 5, 6, 7, 8))
  gathered, catalogue = (jax.device_get(rank(beams, inverted, query_emb, item_emb, K, 0,
                                             ranking, 0.5, source))
                         for source in ("candidates", "catalogue"))
  assert (gathered[0] >= 0).all()
  np.testing.assert_array_equal(catalogue[0], gathered[0])
  for ours, theirs in zip(catalogue[1:], gathered[1:]):
    np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-6)
  with pytest.raises(ValueError, match="cosines_from"):
    decoding.rank_items(beams, inverted, query_emb, item_emb, K, cosines_from="dense")

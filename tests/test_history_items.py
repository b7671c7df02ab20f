"""Requests that read their history as items (data.history_repr 'codes' / 'embedding'):
positions and masks, the codebooks as input embeddings, the table in training and in the
index, exact resume, and the search with a history."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dgi_jax import checkpointing, diagnostics, retrieval, run_setup, train
from dgi_jax import trained_run
from dgi_jax.data import pipeline, records
from dgi_jax.models import history as history_lib
from dgi_jax.models.dgi import DGIModel
from conftest import load_config
from model_fixtures import small_model
from run_fixtures import tiny_config

NUM_ITEMS = 30
MAX_HISTORY = 20


def _model(history_repr, **overrides):
  return small_model(history_repr=history_repr, max_history=MAX_HISTORY, **overrides)


def _table(model, seed=0):
  rng = np.random.default_rng(seed)
  if model.cfg.history_repr == "codes":
    return np.stack([rng.integers(0, k, NUM_ITEMS) for k in model.cfg.codebook_sizes],
                    axis=1).astype(np.int32)
  table = rng.normal(size=(NUM_ITEMS, model.cfg.d_model)).astype(np.float32)
  return table / np.linalg.norm(table, axis=1, keepdims=True)


def _histories(lengths, seed=0):
  """int32 [len(lengths), MAX_HISTORY]: row r holds lengths[r] random items, -1 after."""
  rng = np.random.default_rng(seed)
  return pipeline.pad_rows([rng.integers(0, NUM_ITEMS, n) for n in lengths], MAX_HISTORY)


def _tokens(batch_size, length=12, seed=0):
  tokens = np.random.default_rng(seed).integers(1, 50, (batch_size, length)).astype(np.int32)
  tokens[:, 7:] = 0
  return tokens


def _init(model, tokens, history, table):
  items = np.ones((tokens.shape[0], 8), np.int32)
  noise = [jnp.zeros((tokens.shape[0], k)) for k in model.cfg.codebook_sizes]
  return model.init(jax.random.PRNGKey(0), items, tokens, noise, 1.0, True, history,
                    table)["params"]


def _encode(model, params, tokens, history, table):
  return model.apply({"params": params}, tokens, history, table,
                     method=DGIModel.encode_requests)


def test_recency_counts_from_the_newest_item():
  history = jnp.asarray([[5, 7, -1], [-1, -1, -1], [1, 2, 3]])
  np.testing.assert_array_equal(history_lib.recency(history),
                                [[1, 0, 0], [0, 0, 0], [2, 1, 0]])


@pytest.mark.parametrize("history_repr", ["codes", "embedding"])
def test_one_position_per_item_with_masks_for_0_1_and_20_items(history_repr):
  model = _model(history_repr)
  tokens, history, table = _tokens(3), _histories([0, 1, 20]), _table(model)
  params = _init(model, tokens, history, table)
  request = _encode(model, params, tokens, history, table)
  assert request.states.shape == (3, 12 + MAX_HISTORY, 16)
  assert request.z_q.shape == (3, 16)
  np.testing.assert_array_equal(request.mask[:, :12], tokens != 0)
  np.testing.assert_array_equal(request.mask[:, 12:].sum(axis=1), [0, 1, 20])
  assert request.mask[1, 12] and not request.mask[1, 13:].any()


@pytest.mark.parametrize("history_repr", ["codes", "embedding"])
def test_changed_history_changes_the_request_and_padding_does_not(history_repr):
  model = _model(history_repr)
  tokens, history, table = _tokens(2), _histories([4, 2]), _table(model)
  params = _init(model, tokens, history, table)
  z_q = _encode(model, params, tokens, history, table).z_q
  # The same request again: bitwise the same vector.
  np.testing.assert_array_equal(z_q, _encode(model, params, tokens, history, table).z_q)
  # Another newest item in row 0 only: row 0 moves, row 1 does not.
  changed = history.copy()
  changed[0, 3] = (changed[0, 3] + 1) % NUM_ITEMS
  moved = _encode(model, params, tokens, changed, table).z_q
  assert np.abs(np.asarray(moved[0] - z_q[0])).max() > 1e-4
  np.testing.assert_array_equal(moved[1], z_q[1])
  # Padding reads table row 0 (clipped -1) and is masked: a different row 0 changes
  # nothing when no request holds item 0.
  history[history == 0] = 1
  z_q = _encode(model, params, tokens, history, table).z_q
  other = table.copy()
  other[0] = other[5] if history_repr == "embedding" else (other[0] + 1) % 3
  np.testing.assert_array_equal(z_q, _encode(model, params, tokens, history, other).z_q)


def test_code_history_gradients_reach_the_codebooks():
  model = _model("codes")
  tokens, table = _tokens(2), _table(model)

  def codebook_grads(history, model=model):
    params = _init(model, tokens, history, table)

    def loss(params):
      return jnp.sum(_encode(model, params, tokens, history, table).z_q ** 2)
    grads = jax.grad(loss)(params)
    return [np.abs(np.asarray(grads[f"codebook_{t}"])) for t in range(3)]

  with_items = codebook_grads(_histories([3, 5]))
  for t, grad in enumerate(with_items):
    used = np.unique(table[_histories([3, 5])[_histories([3, 5]) >= 0], t])
    assert grad[used].sum(axis=1).min() > 0  # Every codeword a history item uses.
    unused = np.setdiff1d(np.arange(grad.shape[0]), used)
    assert grad[unused].max(initial=0.0) == 0.0
  # Without history items the request never reads the codebooks; with the switch off it
  # reads them as constants.
  assert all(g.max() == 0.0 for g in codebook_grads(_histories([0, 0])))
  constant = _model("codes", history_code_gradient=False)
  assert all(g.max() == 0.0 for g in codebook_grads(_histories([3, 5]), constant))


def test_empty_history_on_minilm_equals_the_plain_encoder():
  """A BERT request with no history items pools exactly its tokens."""
  from dgi_jax.models import encoders, pretrained
  from dgi_jax.parity.compare import with_pretrained_encoder
  directory = str(pretrained.bundled_minilm_dir())
  base = load_config("tiny")
  with base.unlocked():
    base.data.max_history = 4
  configs = {}
  for history_repr in ("text", "embedding"):
    config = base.copy_and_resolve_references()
    with config.unlocked():
      config.data.history_repr = history_repr
    configs[history_repr] = encoders.resolve_pretrained(
        with_pretrained_encoder(config, directory))
  text_model, items_model = (run_setup.build_model(configs[r]) for r in ("text", "embedding"))
  params = run_setup.init_params(items_model, configs["embedding"], jax.random.PRNGKey(0))
  params = encoders.load_pretrained_params(params, items_model.cfg, directory)
  tokens = np.zeros((2, 10), np.int32)
  tokens[:, :5] = [101, 7592, 2088, 3899, 102]  # [CLS] ... [SEP]
  history = np.full((2, 4), -1, np.int32)
  history[1, 0] = 0
  table = np.eye(1, items_model.cfg.d_model, dtype=np.float32)
  request = _encode(items_model, params, tokens, history, table)
  plain = text_model.apply({"params": {k: v for k, v in params.items()
                                       if k != "history_embed"}},
                           tokens, method=DGIModel.encode_requests)
  np.testing.assert_allclose(request.z_q[0], plain.z_q[0], rtol=1e-5, atol=1e-6)
  assert np.abs(np.asarray(request.z_q[1] - plain.z_q[1])).max() > 1e-3


def test_recent_history_keeps_the_newest_items():
  history = np.arange(25)
  np.testing.assert_array_equal(records.recent_history(history, 20), np.arange(5, 25))
  assert len(records.recent_history(history, 0)) == 0


# ---------------------------------------------------------------- trained runs
def _config(tfds_dir, history_repr):
  config = tiny_config(tfds_dir, num_steps=12, checkpoint_every=6, log_every=3,
                       history_refresh_every=4)
  with config.unlocked():
    config.data.history_repr = history_repr
  return config


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("tfds"))


@pytest.fixture(scope="module", params=["codes", "embedding"])
def run(request, tfds_dir, tmp_path_factory):
  workdir = tmp_path_factory.mktemp(f"history_{request.param}") / "run"
  train.train_and_evaluate(_config(tfds_dir, request.param), workdir)
  return workdir


def _saved_state(workdir):
  checkpointer = checkpointing.Checkpointer(workdir, read_only=True)
  step = checkpointer.latest_step()
  metadata = checkpointer._manager.item_metadata(step)["state"]  # pylint: disable=protected-access
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                        metadata)
  import orbax.checkpoint as ocp
  state = checkpointer._manager.restore(step, args=ocp.args.Composite(  # pylint: disable=protected-access
      state=ocp.args.StandardRestore(target))).state["train_state"]
  checkpointer.close()
  return state, step


def test_training_batches_carry_the_most_recent_history(tfds_dir, tmp_path):
  config = _config(tfds_dir, "codes")
  with config.unlocked():
    config.data.max_history = 2
  run_data = run_setup.prepare_run_data(config, tmp_path)
  batch = next(pipeline.make_train_iterator(run_data.dataset, run_data.tokenizer,
                                            config.data, 16, seed=0))
  source = run_data.dataset.source("train")
  # TFDS stores the rows in its own order; each row carries its example id.
  by_id = {int(r["example_id"]): r for r in source.__getitems__(range(len(source)))}
  rows = [by_id[int(e)] for e in batch["example_id"]]
  for row, record in zip(batch["history"], rows):
    expected = records.recent_history(np.asarray(record["history"]).reshape(-1), 2)
    np.testing.assert_array_equal(row[:len(expected)], expected)
    assert (row[len(expected):] == -1).all()
  # The request tokens hold the query alone: as many tokens as the query text.
  queries = run_data.tokenizer.encode_queries([r["query"].decode() for r in rows])
  np.testing.assert_array_equal((batch["query_tokens"] != 0).sum(axis=1),
                                [min(len(q), config.data.max_query_len) for q in queries])


def test_checkpoint_holds_the_table_of_the_last_refresh(run):
  """Refreshed every 4 steps, the step-12 table is that of the step-12 params exactly."""
  state, step = _saved_state(run)
  assert step == 12
  trained = trained_run.load_trained(run)
  expected = run_setup.history_table(trained.model, state["params"],
                                 trained.run_data.catalogue_tokens)
  np.testing.assert_array_equal(state["history_table"], expected)
  # And the index of the same params serves the same table.
  retriever = retrieval.Retriever(trained.model, trained.params, trained.run_data,
                                  trained.config)
  np.testing.assert_allclose(retriever.history_table, expected, rtol=0, atol=1e-6)


def test_interrupted_and_resumed_run_equals_uninterrupted_run_bitwise(tfds_dir, tmp_path):
  """Stopped at step 6, between the refreshes at 4 and 8: the checkpoint's table (of
  step 4) carries the resumed run through steps 7 and 8 as the uninterrupted one."""
  config = _config(tfds_dir, "codes")
  train.train_and_evaluate(config, tmp_path / "straight")
  train.train_and_evaluate(config, tmp_path / "resumed", stop_at_step=6)
  train.train_and_evaluate(config, tmp_path / "resumed")
  straight, _ = _saved_state(tmp_path / "straight")
  resumed, _ = _saved_state(tmp_path / "resumed")
  for a, b in zip(jax.tree.leaves(straight), jax.tree.leaves(resumed)):
    np.testing.assert_array_equal(a, b)


def test_search_reads_the_history_and_added_items_join_it_at_once(run):
  trained = trained_run.load_trained(run)
  retriever = retrieval.Retriever(trained.model, trained.params, trained.run_data,
                                  trained.config)
  ids = retriever.item_ids
  tokens, history = retriever.tokenize_requests(["", ""], [ids[:5], ids[5:7]])
  # The query text alone in the tokens (none here); the newest 3 (max_history) items.
  assert not tokens.any()
  np.testing.assert_array_equal(history, [[2, 3, 4], [5, 6, -1]])
  codes = diagnostics.diagnose(trained.model, retriever.params,
                               retriever.device_item_embeddings, retriever.sids[:, 0],
                               retriever.encode(tokens, history), retriever.sids[:2, None],
                               route_width=2).request_codes
  assert codes.shape == (2, 3)
  hits = retriever.search_text("", ids[:3], k=5)
  assert len(hits) == 5
  other = retriever.search_text("", ids[10:13], k=5)
  assert [h["cosine"] for h in hits] != [h["cosine"] for h in other]
  with pytest.raises(retrieval.ItemError):
    retriever.tokenize_requests([""], [["no-such-item"]])
  # An item added to the index is a history item at once, read through its own row.
  before = retriever.history_table.shape[0]
  new = retriever.add_items(["Aurora brass desk lamp with linen shade"], ["new-lamp"])
  assert retriever.history_table.shape[0] == before + 1
  _, history = retriever.tokenize_requests([""], [["new-lamp"]])
  assert history[0, 0] == new[0]
  expected = (retriever.sids if trained.model.cfg.history_repr == "codes"
              else retriever.item_embeddings)[new[0]]
  np.testing.assert_array_equal(np.asarray(retriever.history_table)[new[0]], expected)
  assert retriever.search_text("", ["new-lamp"], k=3)


def test_dgi_search_cli_takes_the_history(run, dgi):
  trained = trained_run.load_trained(run)
  first = trained.run_data.dataset.item_ids[0]
  code, out, err = dgi("search", "--workdir", run, "", "--history", first, "--k", "3")
  assert code == 0, err
  assert out.splitlines()[0].split()[:2] == ["rank", "beam"]
  code, _, err = dgi("search", "--workdir", run, "", "--history", "no-such-item")
  assert code == 1 and "unknown item id 'no-such-item'" in err

"""The training loop: data, model, k-means init, sharded steps, checkpoints, metrics.

`train_and_evaluate(config, workdir)` is the library entry point behind `dgi train`.
Restore order: resume this run's latest checkpoint, else `train.init_from`, else scratch
(then k-means initialisation of the codebooks).
"""

import contextlib
import dataclasses
import functools
import time
from typing import Any, Callable, Dict, Optional

import jax
import numpy as np
import tqdm

from dgi_jax import checkpointing, config_checks, encoder_cache, errors, metrics_log
from dgi_jax import optim, paths
from dgi_jax import preemption, resume_checks, run_lock, run_setup, sharding
from dgi_jax import trained_run
from dgi_jax import train_step as train_step_lib
from dgi_jax.data import pipeline
from dgi_jax.data import tokenizer as tokenizer_lib
from dgi_jax.models import encoders
from dgi_jax.models import history as history_lib


class NonFiniteLossError(errors.UserError, FloatingPointError):
  """Training produced a NaN/inf loss; the last good checkpoint is left untouched."""


@dataclasses.dataclass(frozen=True)
class TrainResult:
  """Where `train_and_evaluate` left the run."""
  step: int  # The run's step when the loop ended (its last checkpoint).
  metrics: Dict[str, float]  # The last logged window of train metrics; {} if no step ran.
  train_seconds: float  # In train steps, the earlier sessions of a resumed run included.
  # This session's wall-time breakdown (`metrics_log.PhaseTimer.breakdown`): steps_run and
  # seconds per phase, other and total.
  timing: Dict[str, Any] = dataclasses.field(default_factory=dict)


def _log(message: str) -> None:
  if jax.process_index() == 0:
    tqdm.tqdm.write(message)


def _compile_step(model, optimizer, config, total_steps, mesh, state_sharding):
  """The jitted (sharded) or pmapped train step, and how to feed it a host batch."""
  if config.train.parallelism == "pmap":
    step = jax.pmap(train_step_lib.make_train_step(model, optimizer, config, total_steps,
                                                   axis_name=sharding.DATA_AXIS),
                    axis_name=sharding.DATA_AXIS, in_axes=(0, 0, None), donate_argnums=(0,))
    return step, sharding.pmap_batch
  if config.train.parallelism != "jit":
    raise ValueError(f"train.parallelism={config.train.parallelism!r}; expected jit|pmap")
  batch_sharding = sharding.data_sharding(mesh)
  step = jax.jit(train_step_lib.make_train_step(model, optimizer, config, total_steps),
                 in_shardings=(state_sharding, batch_sharding, sharding.replicated(mesh)),
                 out_shardings=(state_sharding, sharding.replicated(mesh)),
                 donate_argnums=(0,))
  return step, lambda batch: sharding.global_batch(batch, batch_sharding)


def _abstract_state(model, optimizer, config, rng, state_sharding_of, num_items: int):
  """Shapes, dtypes and target shardings of the train state (nothing is allocated)."""
  table = (history_lib.zero_table(model.cfg, num_items) if model.cfg.history_items
           else None)
  shapes = jax.eval_shape(lambda: train_step_lib.create_train_state(
      run_setup.init_params(model, config, rng), optimizer, table))
  return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype,
                                                     sharding=state_sharding_of), shapes)


def _initial_params(model, config, init_rng, abstract_state, replicated):
  """A new run's parameters before k-means: `init_from`'s, or fresh ones -- the encoder's
  from `model.pretrained` when set."""
  if config.train.init_from:
    return checkpointing.restore_params(config.train.init_from, abstract_state.params)
  params = run_setup.init_params(model, config, init_rng, out_sharding=replicated)
  if config.model.pretrained:
    params = encoders.load_pretrained_params(params, model.cfg, config.model.pretrained)
  return params


def _initial_state(model, optimizer, config, run_data, params, kmeans_rng, replicated,
                   timer: metrics_log.PhaseTimer, cache):
  """A new run's state from `_initial_params`: codebooks by k-means over the encoder's
  item embeddings (timed as `kmeans`; `train.kmeans_init`, or `train.init_from_kmeans`
  for an `init_from` run), read from the frozen encoder's `cache` when there is one."""
  run_kmeans = (config.train.init_from_kmeans if config.train.init_from
                else config.train.kmeans_init)
  if run_kmeans:
    with timer.phase("kmeans"):
      params = run_setup.kmeans_init_codebooks(
          model, params, run_data.catalogue_tokens, config, kmeans_rng,
          item_embeddings=_catalogue_embeddings(cache, model, params, config))
  table = (run_setup.history_table(model, params, run_data.catalogue_tokens,
                                   int(config.eval.item_batch_size))
           if model.cfg.history_items else None)
  return jax.device_put(train_step_lib.create_train_state(params, optimizer, table),
                        replicated)


def _refresh_history_table(model, state, run_data, config, on_host, put):
  """`state` with its history table recomputed from its params (see models/history.py);
  `put` places the new table as the state's other arrays are placed."""
  table = run_setup.history_table(model, on_host(state).params, run_data.catalogue_tokens,
                                  int(config.eval.item_batch_size))
  return state.replace(history_table=put(table))


def _catalogue_embeddings(cache, model, params, config) -> Optional[np.ndarray]:
  """Every catalogue item's z_base under `params` float32 [N, d], from the frozen
  encoder's cache (all of it, or the bottom layers' output through the top); None
  without a cache."""
  if cache is None:
    return None
  return cache.catalogue_embeddings(model, params, int(config.eval.item_batch_size))


def _build_encoder_cache(model, params, run_data, config, timer: metrics_log.PhaseTimer,
                         steps_left: bool):
  """The frozen encoder's outputs for the run's data (timed as `encoder_cache`): an
  `EncoderCache` when the whole encoder is constant (`encoder_cache.use_cache`), a
  `BottomCache` when its bottom layers are (`use_bottom_cache`); None otherwise, when no
  steps are left, or when the cache would take more than
  `encoder_cache.MAX_MEMORY_SHARE` of the free memory. A cache that an earlier run in
  this process built from the same frozen weights and data is taken as it is
  (`encoder_cache.take_held`), and so is one an earlier process saved in
  `train.encoder_cache_dir` (memory-mapped: it takes no memory check); a cache built
  here is saved there.

  `params` may be a new run's before k-means: the cache reads only the encoder's.
  """
  if not steps_left:
    return None
  num_items, num_requests = (run_data.dataset.num_items,
                             run_data.dataset.num_examples("train"))
  if encoder_cache.use_cache(model, params, config):
    kind, what, build = "outputs", "its outputs", encoder_cache.build
    needed = encoder_cache.cache_bytes(num_items, num_requests, config, model.cfg.d_model)
  elif encoder_cache.use_bottom_cache(model, params, config):
    kind, what, build = ("bottom", "its frozen bottom layers' outputs",
                         encoder_cache.build_bottom)
    needed = encoder_cache.bottom_cache_bytes(num_items, run_data.catalogue_tokens.shape[1],
                                              num_requests, config, model.cfg.d_model)
  else:
    return None
  with timer.phase("data"):  # The cache's key: what it would encode, and with what.
    request_tokens = encoder_cache.training_request_tokens(
        run_data, config, encoder_cache.request_batch_size(config))
    key = encoder_cache.fingerprint(kind, model, params, config,
                                    run_data.catalogue_tokens, request_tokens)
  cache = encoder_cache.take_held(key)
  if cache is not None:
    _log(f"The encoder is frozen: the steps read {what}, kept from an earlier run in this "
         "process with the same frozen weights and data")
    return cache
  cache_dir = config.train.encoder_cache_dir
  if cache_dir:
    with timer.phase("encoder_cache"):
      cache = encoder_cache.load(cache_dir, key)
    if cache is not None:
      encoder_cache.hold(key, cache)
      _log(f"The encoder is frozen: the steps read {what}, saved by an earlier process "
           f"in {cache_dir} with the same frozen weights and data")
      return cache
  available = encoder_cache.available_memory_bytes()
  if needed > encoder_cache.MAX_MEMORY_SHARE * available:
    _log(f"The encoder is frozen, but {what} would take {needed / 2**30:.1f} GiB of "
         f"the {available / 2**30:.1f} GiB free: the steps run it instead (a bfloat16 "
         "train.encoder_cache_dtype halves them)")
    return None
  save_here = bool(cache_dir) and jax.process_index() == 0  # One writer per folder.
  with timer.phase("encoder_cache"):
    cache = build(model, params, run_data, config, request_tokens=request_tokens)
    if save_here:
      encoder_cache.save(cache, cache_dir, key)
  encoder_cache.hold(key, cache)
  _log(f"The encoder is frozen: the steps read {what}, encoded once "
       f"({cache.nbytes / 2**30:.2f} GiB; train.cache_frozen_encoder"
       + (f"; saved in {cache_dir}" if save_here else "") + ")")
  return cache


class _MetricsWindow:
  """Averages step metrics between log lines and times them."""

  def __init__(self):
    self._sums, self._count, self._start = {}, 0, time.perf_counter()

  def add(self, metrics: Dict[str, float]) -> None:
    for k, v in metrics.items():
      if k != "finite":
        self._sums[k] = self._sums.get(k, 0.0) + float(v)
    self._count += 1

  def flush(self) -> Dict[str, float]:
    summary = {k: v / self._count for k, v in self._sums.items()}
    summary["steps_per_sec"] = self._count / (time.perf_counter() - self._start)
    self.__init__()
    return summary


def train_and_evaluate(config, workdir, evaluate_fn: Optional[Callable] = None,
                       stop_at_step: Optional[int] = None,
                       allow_dataset_change: bool = False) -> TrainResult:
  """Trains DGI as `config` says, checkpointing under `workdir`.

  Stops early, with a checkpoint, on SIGTERM or Ctrl-C (every process at the same step)
  or after `stop_at_step`; calling it again resumes exactly where it stopped.

  Args:
    config: the full (locked) ml_collections config.
    workdir: output directory: checkpoints, metrics.jsonl, tokenizer, TFDS data.
    evaluate_fn: optional `(params, run_data, item_embeddings) -> {metric: value}` run
      every `train.eval_every` steps on the validation split; its `train.best_metric`
      picks the best checkpoint. `item_embeddings` is z_base of the catalogue [N, d]
      when the frozen encoder's cache holds it (the same under every step's params),
      else None.
    stop_at_step: leave the loop (with a checkpoint) after this step although the run is
      longer. The schedules always follow `train.num_steps`.
    allow_dataset_change: resume although the dataset differs from the checkpoint's.
  Returns:
    The step reached, the last metrics window, the training time and this session's
    wall-time breakdown (also written to `<workdir>/train_timing.json` and printed when
    steps ran).
  Raises:
    errors.UserError: before anything is trained: a config value no run can use
      (`config_checks`), another process training in `workdir` (`run_lock`), a
      checkpoint trained under another config or on other data (`resume_checks`; the
      checkpoints stay where they are).
    NonFiniteLossError: a loss became NaN/inf; names the step and the last good checkpoint.
  """
  timer = metrics_log.PhaseTimer()
  config_checks.check_values(config)
  config_checks.check_devices(config, jax.device_count())
  workdir = paths.as_path(workdir)
  if workdir.exists() and not workdir.is_dir():
    raise errors.UserError(f"work directory {workdir} is a file, not a directory")
  workdir.mkdir(parents=True, exist_ok=True)
  with run_lock.hold(workdir, enabled=jax.process_index() == 0):
    return _train(config, workdir, evaluate_fn, stop_at_step, allow_dataset_change, timer)


def _resume_check(config, workdir, dataset_version: Optional[str] = None,
                  allow_dataset_change: bool = False) -> Callable[[int, Dict], None]:
  """`check(step, json_items)` for `restore_latest_good`: refuses a checkpoint trained
  under another config or, given `dataset_version`, on another dataset."""
  where = checkpointing.checkpoint_dir(workdir)

  def check(step: int, items: Dict) -> None:
    resume_checks.check_config(trained_run.config_from_json(items["config"]), config, step,
                               where)
    if dataset_version is not None and resume_checks.check_dataset(
        items["run"], dataset_version, step, where, allow_dataset_change):
      _log(f"The dataset differs from checkpoint step {step}'s; continuing on the new "
           "data (allow_dataset_change)")

  return check


def _non_finite_message(step: int, metrics: Dict, last_good_step: Optional[int],
                        workdir) -> str:
  """One line: the step, the loss terms that are not finite, the checkpoint to go back to."""
  bad = ", ".join(f"{k}={float(v)}" for k, v in metrics.items()
                  if k != "finite" and not np.isfinite(v))
  kept = ("no checkpoint was saved yet" if last_good_step is None else
          f"last good checkpoint: step {last_good_step} in "
          f"{checkpointing.checkpoint_dir(workdir)}")
  return (f"non-finite loss at step {step} ({bad or 'the total'}); {kept}. Lower the "
          "learning rates (optim.*_lr) or check the data")


def _checked_run_data(config, workdir, checkpointer) -> run_setup.RunData:
  """The run's data, once the newest checkpoint's config is checked against `config`
  (before the data is prepared, which may write to the work directory); a resumed run
  keeps its checkpoint's tokenizer, the one its params know."""
  newest = checkpointer.newest_json_items()
  tokenizer = None
  if newest is not None:
    _resume_check(config, workdir)(*newest)
    tokenizer = tokenizer_lib.tokenizer_from_json(newest[1]["tokenizer"])
  run_data = run_setup.prepare_run_data(config, workdir, tokenizer=tokenizer)
  config_checks.check_catalogue(config, run_data.dataset.num_items,
                                run_data.dataset.num_examples("train"))
  return run_data


def _train(config, workdir, evaluate_fn, stop_at_step, allow_dataset_change,
           timer: metrics_log.PhaseTimer) -> TrainResult:
  """`train_and_evaluate` in a locked work directory."""
  config = encoders.resolve_pretrained(config)
  eval_enabled = evaluate_fn is not None and config.train.eval_every > 0
  with contextlib.closing(checkpointing.Checkpointer(
      workdir, best_metric=config.train.best_metric if eval_enabled else None)
                         ) as checkpointer:
    with timer.phase("data"):
      run_data = _checked_run_data(config, workdir, checkpointer)
      data_iterator = pipeline.make_train_iterator(
          run_data.dataset, run_data.tokenizer, config.data,
          sharding.host_batch_size(config.train.global_batch_size),
          config.data.shuffle_seed, jax.process_index(), jax.process_count(),
          catalogue_tokens=run_data.catalogue_tokens)
    with timer.phase("init"):  # k-means, inside, is timed apart.
      model = run_setup.build_model(config)
      total_steps = config.train.num_steps
      optimizer = optim.make_optimizer(config.optim, total_steps)
      mesh = sharding.make_mesh()
      replicated = sharding.replicated(mesh)

      init_rng, kmeans_rng, run_rng = jax.random.split(
          jax.random.PRNGKey(config.train.seed), 3)
      abstract_state = _abstract_state(model, optimizer, config, init_rng, replicated,
                                       run_data.dataset.num_items)
      state_sharding = jax.tree.map(lambda _: replicated, abstract_state)
      abstract_rng = jax.ShapeDtypeStruct(run_rng.shape, run_rng.dtype,
                                          sharding=replicated)

      restored = checkpointer.restore_latest_good(
          abstract_state, abstract_rng, data_iterator,
          check=_resume_check(config, workdir, run_data.dataset.version,
                              allow_dataset_change))
      last_step = total_steps if stop_at_step is None else min(stop_at_step, total_steps)
      if restored is not None:
        state, run_rng, step = restored
        if step > total_steps:
          raise errors.ConfigError(
              f"train.num_steps={total_steps} is below step {step} of the checkpoint in "
              f"{checkpointing.checkpoint_dir(workdir)}; give train.num_steps >= {step}")
        _log(f"Resumed from step {step} of {checkpointing.checkpoint_dir(workdir)}")
        cache = _build_encoder_cache(model, state.params, run_data, config, timer,
                                     steps_left=step < last_step)
      else:
        params = _initial_params(model, config, init_rng, abstract_state, replicated)
        # Before k-means, which then reads the cached item embeddings instead of running
        # the encoder over the catalogue once more.
        cache = _build_encoder_cache(model, params, run_data, config, timer,
                                     steps_left=0 < last_step)
        state = _initial_state(model, optimizer, config, run_data, params, kmeans_rng,
                               replicated, timer, cache)
        run_rng = jax.device_put(run_rng, replicated)

      tokenizer_json = run_data.tokenizer.to_json()
      checkpointer.check_space(state, tokenizer_json)
      step_fn, to_device = _compile_step(model, optimizer, config, total_steps, mesh,
                                         state_sharding)
      pmapped = config.train.parallelism == "pmap"
      if pmapped:
        state = sharding.replicate_for_pmap(state)
      on_host = sharding.unreplicate if pmapped else (lambda tree: tree)
      put = (sharding.replicate_for_pmap if pmapped
             else functools.partial(jax.device_put, device=replicated))
      refresh_every = (int(config.train.history_refresh_every) if model.cfg.history_items
                       else 0)

    config_json = checkpointing.dumps_config(config)
    run_record = resume_checks.run_record(run_data.dataset.version)
    writer = metrics_log.MetricsWriter(workdir)
    window = _MetricsWindow()
    first_step = int(on_host(state).step)
    writer.truncate_after(first_step)  # The steps after it are trained (and logged) again.
    last_good_step = checkpointer.latest_step()
    summary, done = {}, first_step
    # The bar ends its line however the loop ends, so an error message starts a new one.
    with tqdm.tqdm(total=total_steps, initial=first_step, desc="train",
                   disable=jax.process_index() != 0, dynamic_ncols=True) as progress, \
         preemption.PreemptionGuard() as guard:
      for step in range(first_step, last_step):
        with timer.phase("input"):
          batch = next(data_iterator)
          batch = to_device(cache.fill(batch) if cache else batch)
        with timer.step():  # Until the metrics arrive: the step has then run.
          state, metrics = step_fn(state, batch, run_rng)
          metrics = jax.device_get(on_host(metrics))
        done = step + 1
        if not metrics["finite"]:
          raise NonFiniteLossError(_non_finite_message(done, metrics, last_good_step,
                                                       workdir))
        window.add(metrics)
        progress.update(1)
        if refresh_every and done % refresh_every == 0:
          # Before the checkpoint of this step, which then holds the table the next steps
          # read: a resumed run reads the same table as an uninterrupted one.
          with timer.phase("history_refresh"):
            state = _refresh_history_table(model, state, run_data, config, on_host, put)
        preempted = guard.should_stop(done)
        # A stopped run logs its last steps too: the summary and the log end where it did.
        if done % config.train.log_every == 0 or done == last_step or preempted:
          summary = window.flush()
          writer.write(done, summary)
          progress.set_postfix(loss=f"{summary['total']:.4f}",
                               steps_s=f"{summary['steps_per_sec']:.2f}")
        eval_metrics = None
        if eval_enabled and (done % config.train.eval_every == 0 or done == total_steps):
          with timer.phase("validation"):
            current = on_host(state).params
            eval_metrics = evaluate_fn(current, run_data,
                                       _catalogue_embeddings(cache, model, current, config))
          writer.write(done, eval_metrics, kind="valid")
        if done % config.train.checkpoint_every == 0 or done == last_step or preempted:
          with timer.phase("checkpoint"):
            checkpointer.save(done, on_host(state), run_rng, data_iterator, config_json,
                              tokenizer_json, eval_metrics, run_record=run_record)
          last_good_step = done
        if preempted:
          _log(f"{guard.reason}: saved step {done}; rerun the same command to resume")
          break
    with timer.phase("checkpoint"):
      checkpointer.wait()  # The last save is asynchronous; closing would wait for it too.
    timing = timer.breakdown()
    if timing["steps_run"]:  # A session that trained nothing keeps the last breakdown.
      metrics_log.write_timing(workdir, dict(timing, first_step=first_step, step=done))
      _log(metrics_log.format_timing(timing))
    return TrainResult(step=done, metrics=summary,
                       train_seconds=metrics_log.train_seconds(writer.records()),
                       timing=timing)

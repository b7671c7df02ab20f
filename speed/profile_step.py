"""Where a CPU train step's time goes: XLA cost analysis, sub-part timings, thread settings.

Builds the config's model and jitted train step as `dgi train` does (train.py
`_compile_step`: NamedSharding over the ('data',) mesh, state donated) on a random batch,
and prints:
  (a) XLA cost analysis of the compiled step (FLOPs, bytes accessed), its time and the
      achieved GFLOP/s against the measured matmul peak;
  (b) separately jitted sub-parts (Gumbel noise, item / request encoder, quantizer,
      decoder, losses, optimizer), forward and forward+backward, each with its FLOPs and
      share of the full step; and the compiled step's HLO instruction counts by opcode;
  (c) the full step in child processes under different thread settings (XLA_FLAGS,
      CPU affinity), side by side: wall, user and system CPU seconds per step
      (resource.getrusage) and the process's thread count.

Usage:
  python speed/profile_step.py [--config configs/default.py] [--steps 20]
      [--no_parts] [--no_threads] [--variants default,thp,mallopt,...] [--rounds 1]
      [--heap_malloc]
"""

import argparse
import collections
import functools
import json
import os
import pathlib
import re
import resource
import subprocess
import sys
import time

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(pathlib.Path(__file__).parent))

# Thread / allocator variants for (c): name -> (extra XLA_FLAGS, pin to one core, extra env).
# glibc malloc serves blocks over its mmap threshold (128 KiB, rising only as such blocks
# are freed) with fresh mmap()s, so every step's large temporaries are page-faulted in and
# zeroed by the kernel again: system time. The `malloc` variants keep them in the heap
# (threshold 32 MiB = glibc's maximum; no trimming of freed memory back to the OS).
_NO_EIGEN = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
_MALLOC = {"MALLOC_MMAP_THRESHOLD_": str(32 << 20), "MALLOC_TRIM_THRESHOLD_": str(1 << 32),
           "MALLOC_TOP_PAD_": str(64 << 20)}
# No mmap at all: XLA's per-execution temporaries (one block larger than the 32 MiB cap)
# then come from the heap and are reused by the next step instead of faulted in afresh.
_MALLOC_NO_MMAP = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(1 << 32),
                   "MALLOC_TOP_PAD_": str(64 << 20)}
_THP = {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}
_ARENA1 = dict(_MALLOC_NO_MMAP, MALLOC_ARENA_MAX="1")
VARIANTS = {
    "default": ("", False, {}),
    "no_eigen": ("--xla_cpu_multi_thread_eigen=false", False, {}),
    "no_eigen_1intra": (_NO_EIGEN, False, {}),
    "1core": ("", True, {}),
    "1core_no_eigen": (_NO_EIGEN, True, {}),
    "malloc": ("", False, _MALLOC),
    "1core_malloc": ("", True, _MALLOC),
    "malloc_no_mmap": ("", False, _MALLOC_NO_MMAP),
    "1core_malloc_no_mmap": ("", True, _MALLOC_NO_MMAP),
    "malloc_arena1_no_mmap": ("", False, _ARENA1),
    "thp": ("", False, _THP),
    "1core_thp": ("", True, _THP),
    "no_eigen_thp": (_NO_EIGEN, False, _THP),
    "mallopt": ("", False, {"PROFILE_MALLOPT": "1"}),  # common.keep_freed_memory_in_heap
}


def _setup(config_path, batch_size=None):
  import jax
  import numpy as np
  from dgi_jax import config_files, optim, run_setup, sharding
  from dgi_jax import train_step as train_step_lib
  config = config_files.load_file(config_path)
  if batch_size:
    config.unlock()
    config.train.global_batch_size = batch_size
    config.lock()
  b = config.train.global_batch_size
  model = run_setup.build_model(config)
  total = config.train.num_steps
  optimizer = optim.make_optimizer(config.optim, total)
  mesh = sharding.make_mesh()
  rep, data = sharding.replicated(mesh), sharding.data_sharding(mesh)
  params = run_setup.init_params(model, config, jax.random.PRNGKey(0), out_sharding=rep)
  state = jax.device_put(train_step_lib.create_train_state(params, optimizer), rep)
  step = jax.jit(train_step_lib.make_train_step(model, optimizer, config, total),
                 in_shardings=(rep, data, rep), out_shardings=(rep, rep),
                 donate_argnums=(0,))
  rs = np.random.RandomState(0)
  vocab = config.data.vocab_size
  host = dict(
      item_tokens=rs.randint(1, vocab, (b, config.data.max_item_len)).astype(np.int32),
      query_tokens=rs.randint(1, vocab, (b, config.data.max_query_len)).astype(np.int32),
      item_index=rs.randint(0, 1000, b).astype(np.int32),
      example_id=np.arange(b, dtype=np.int32))
  if model.cfg.history_items:
    raise SystemExit("profile_step.py: history_repr 'text' configs only")
  batch = sharding.global_batch(host, data)
  return config, model, optimizer, params, state, step, batch


def _cost(compiled):
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get("flops", float("nan"))), float(cost.get("bytes accessed", float("nan")))


def _best_of(fn, steps, windows=3):
  """Best window's seconds per call of `fn()` (blocking): load only ever slows a window."""
  best = float("inf")
  for _ in range(windows):
    start = time.perf_counter()
    for _ in range(steps):
      fn()
    best = min(best, (time.perf_counter() - start) / steps)
  return best


def _step_runner(step, state, batch, rng):
  import jax
  compiled = step.lower(state, batch, rng).compile()
  holder = {"state": state}

  def one():
    holder["state"], metrics = compiled(holder["state"], batch, rng)
    jax.block_until_ready(metrics)
  for _ in range(3):
    one()
  return compiled, one


def child(args):
  """(c)'s measurement inside one process: wall / user / sys per step, thread count."""
  if os.environ.get("PROFILE_PIN_ONE_CORE") == "1":
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
  if os.environ.get("PROFILE_MALLOPT") == "1":
    from common import keep_freed_memory_in_heap
    assert keep_freed_memory_in_heap()
  import jax
  _, _, _, _, state, step, batch = _setup(args.config, args.batch_size)
  _, one = _step_runner(step, state, batch, jax.random.PRNGKey(1))
  best = None
  for _ in range(3):
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for _ in range(args.steps):
      one()
    r1, t1 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    row = dict(wall=(t1 - t0) / args.steps, user=(r1.ru_utime - r0.ru_utime) / args.steps,
               sys=(r1.ru_stime - r0.ru_stime) / args.steps,
               vcsw=(r1.ru_nvcsw - r0.ru_nvcsw) / args.steps,
               ivcsw=(r1.ru_nivcsw - r0.ru_nivcsw) / args.steps,
               minflt=(r1.ru_minflt - r0.ru_minflt) / args.steps)
    if best is None or row["wall"] < best["wall"]:
      best = row
  threads = int(re.search(r"Threads:\s+(\d+)", open("/proc/self/status").read()).group(1))
  best["threads"] = threads
  print("RESULT " + json.dumps(best))


def thread_comparison(args):
  print(f"\n(c) thread settings, full step in child processes ({args.steps} steps x 3 "
        "windows, best window; CPU seconds from getrusage)")
  names = args.variants.split(",")
  rows = {}
  for _ in range(args.rounds):  # rounds interleave the variants against load bursts.
    for name in names:
      flags, pin, extra = VARIANTS[name]
      env = dict(os.environ, **extra)
      env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + flags).strip()
      env["PROFILE_PIN_ONE_CORE"] = "1" if pin else "0"
      cmd = [sys.executable, __file__, "--child", "--config", args.config,
             "--steps", str(args.steps)]
      if args.batch_size:
        cmd += ["--batch_size", str(args.batch_size)]
      out = subprocess.run(cmd, env=env, capture_output=True, text=True)
      lines = [l for l in out.stdout.splitlines() if l.startswith("RESULT ")]
      if not lines:
        print(f"  {name}: failed: {out.stderr.strip().splitlines()[-1:]}")
        continue
      row = json.loads(lines[-1][7:])
      if name not in rows or row["wall"] < rows[name]["wall"]:
        rows[name] = row
  print(f"  {'variant':<17}{'wall ms':>9}{'user ms':>9}{'sys ms':>9}{'cpu/wall':>9}"
        f"{'vol cs':>8}{'invol cs':>9}{'minflt':>8}{'threads':>8}  XLA_FLAGS / affinity / env")
  base = rows.get("default", {}).get("wall")
  for name, r in rows.items():
    flags, pin, extra = VARIANTS[name]
    rel = f"  ({base / r['wall']:.2f}x default)" if base else ""
    print(f"  {name:<17}{r['wall'] * 1e3:>9.1f}{r['user'] * 1e3:>9.1f}{r['sys'] * 1e3:>9.1f}"
          f"{(r['user'] + r['sys']) / r['wall']:>9.2f}{r['vcsw']:>8.0f}{r['ivcsw']:>9.0f}"
          f"{r['minflt']:>8.0f}{r['threads']:>8}  {flags or '-'}{' / 1 core' if pin else ''}"
          f"{' / ' + ' '.join(f'{k}={v}' for k, v in extra.items()) if extra else ''}{rel}")


def hlo_opcodes(compiled, top=12):
  """Instruction counts by opcode in the compiled HLO (fusions counted by kind)."""
  counts = collections.Counter()
  for line in compiled.as_text().splitlines():
    m = re.match(r"\s*(?:ROOT )?%?[\w.\-]+ = \S+ (\w[\w\-]*)\(", line)
    if not m:
      m = re.match(r"\s*(?:ROOT )?%?[\w.\-]+ = \([^=]*\) (\w[\w\-]*)\(", line)
    if m:
      op = m.group(1)
      if op == "fusion":
        kind = re.search(r"kind=(k\w+)", line)
        op = f"fusion:{kind.group(1) if kind else '?'}"
      counts[op] += 1
  return counts.most_common(top)


def _category(op_name: str, instruction: str = ""):
  """(phase, module, kind) of one HLO instruction from its metadata op_name and its name
  (a dot, or a YNNPACK fusion around one, is a matmul whatever op_name it carries:
  autodiff's kernel gradient is named after the transpose that follows it)."""
  phase = "bwd" if "transpose(" in op_name else "fwd" if "jvp(" in op_name else "other"
  if "embed_items" in op_name:
    module = "item encoder"
  elif "encode_requests" in op_name:
    module = "request encoder"
  elif "DGIModel.decode" in op_name:
    module = "decoder"
  elif "forward_from_item_embedding" in op_name:
    module = "quantizer"
  elif phase != "other":
    module = "losses"
  elif not op_name:
    module = "runtime"
  else:
    module = "optimizer/other"
  last = op_name.rsplit("/", 1)[-1]
  if "dot_general" in last or instruction.startswith(("dot", "ynn_fusion")):
    kind = "matmul"
  elif "/mlp/" in op_name and last not in ("dot_general", "add"):
    kind = "gelu"
  elif "/ln_" in op_name or "layer_norm" in op_name or "/ln" in op_name:
    kind = "layernorm"
  elif "attn/" in op_name:
    kind = "attention (softmax, mask)"
  elif "gather" in last or "scatter" in last:
    kind = "gather/scatter"
  else:
    kind = "other elementwise"
  return phase, module, kind


def trace_breakdown(compiled, one, steps=3, top=15):
  """Per-op time shares from a jax.profiler trace of `steps` steps, by HLO op_name."""
  import glob
  import tempfile
  import jax
  meta = {}
  for line in compiled.as_text().splitlines():
    m = re.match(r'\s*(?:ROOT )?%?([\w.\-]+) = .*op_name="([^"]*)"', line)
    if m:
      meta[m.group(1)] = m.group(2)
  with tempfile.TemporaryDirectory() as d:
    jax.profiler.start_trace(d)
    for _ in range(steps):
      one()
    jax.profiler.stop_trace()
    data = jax.profiler.ProfileData.from_file(
        glob.glob(d + "/**/*.xplane.pb", recursive=True)[0])
    per_op, count = collections.Counter(), collections.Counter()
    for plane in data.planes:
      for tl in plane.lines:
        if "XLAEigen" not in tl.name and "PjRtCpuClient" not in tl.name:
          continue
        for e in tl.events:
          if e.name.startswith(("ThunkExecutor", "ThreadpoolListener")):
            continue
          per_op[e.name] += e.duration_ns / steps / 1e6
          count[e.name] += 1
  total = sum(per_op.values())
  print(f"\n(b) per-op trace ({steps} steps, jax.profiler): {total:.1f} ms of op time per "
        "step summed over XLA's threads (ops on two threads overlap, so this exceeds wall)")
  groups = {i: collections.Counter() for i in range(3)}
  pairs = collections.Counter()
  for name, ms in per_op.items():
    cat = _category(meta.get(name, ""), name)
    for i in range(3):
      groups[i][cat[i]] += ms
    pairs[(cat[1], cat[2])] += ms
  for i, title in enumerate(("phase", "module", "kind")):
    print(f"  by {title}: " + ", ".join(f"{k} {v / total:.1%}" for k, v in
                                          groups[i].most_common()))
  print("  by module x kind (top 12): " + ", ".join(
      f"{m}/{k} {v / total:.1%}" for (m, k), v in pairs.most_common(12)))
  print(f"  top {top} ops:")
  for name, ms in per_op.most_common(top):
    print(f"    {ms:7.2f} ms {ms / total:6.1%} {count[name] // steps:3d}x {name:<30} "
          f"{meta.get(name, '')[len('jit(train_step)/'):][:110]}")


def parts(args, config, model, optimizer, params, state, batch, step_seconds, step_flops):
  """(b): separately jitted sub-parts of the step, forward and forward+backward."""
  import jax
  import jax.numpy as jnp
  from dgi_jax import losses
  from dgi_jax import train_step as train_step_lib
  from dgi_jax.models import quantizer
  from dgi_jax.models.dgi import DGIModel

  cfg = model.cfg
  det = cfg.dropout_rate == 0.0
  rng = jax.random.PRNGKey(1)
  tau = jnp.float32(0.5)
  apply = lambda p, *a, **k: model.apply({"params": p}, *a, **k)  # noqa: E731
  noise = jax.jit(train_step_lib.gumbel_noise, static_argnums=2)(
      rng, batch["example_id"], tuple(cfg.codebook_sizes))
  z_base = jax.jit(lambda p, t: apply(p, t, method=DGIModel.embed_items))(
      params, batch["item_tokens"])
  outputs = jax.jit(lambda p, z, q, n: apply(p, z, q, n, tau, det,
                                             method=DGIModel.forward_from_item_embedding))(
      params, z_base, batch["query_tokens"], noise)
  request = jax.jit(lambda p, q: apply(p, q, method=DGIModel.encode_requests))(
      params, batch["query_tokens"])
  codebooks = [params[f"codebook_{t}"] for t in range(len(cfg.codebook_sizes))]
  gamma_q = params["gamma_quantizer"] if "gamma_quantizer" in params else params.get("gamma")
  prefix = jnp.stack(outputs["code_vectors"][:-1], axis=1)

  def sumsq(tree):
    return sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(tree)
               if jnp.issubdtype(x.dtype, jnp.floating))

  def fwd_bwd(f):
    """jit of grad of a scalar of f's outputs wrt every float argument."""
    def g(*a):
      return jax.grad(lambda *x: sumsq(f(*x)), argnums=tuple(range(len(a))))(*a)
    return g

  item_fn = lambda p, t: apply(p, t, method=DGIModel.embed_items)  # noqa: E731
  req_fn = lambda p, q: apply(p, q, method=DGIModel.encode_requests)[:2]  # noqa: E731
  quant_fn = lambda z, cb, g: quantizer.soft_quantize(  # noqa: E731
      z, cb, g, noise, tau, cfg.geometry, cfg.grad_path)._asdict()
  dec_fn = lambda p, zq, s, pre: apply(p, zq, s, request.mask, pre, det,  # noqa: E731
                                       method=DGIModel.decode)
  float_keys = [k for k in outputs if k != "codes"]
  loss_fn = lambda o: losses.dgi_losses(  # noqa: E731
      dict(o, codes=outputs["codes"]), batch["item_index"], config.loss, cfg.geometry)["total"]
  loss_inputs = {k: outputs[k] for k in float_keys}
  lag = train_step_lib.make_loss_and_grads(model, config, config.train.num_steps)
  grads = jax.jit(lag)(params, batch, rng, state.step)[1]
  opt_fn = lambda g, s, p: optimizer.update(g, s, p)  # noqa: E731

  items = [
      ("gumbel noise", lambda: (functools.partial(train_step_lib.gumbel_noise,
                                                  codebook_sizes=tuple(cfg.codebook_sizes)),
                                (rng, batch["example_id"]))),
      ("item encoder fwd", lambda: (item_fn, (params, batch["item_tokens"]))),
      ("item encoder fwd+bwd", lambda: (fwd_bwd(lambda p: item_fn(p, batch["item_tokens"])),
                                        (params,))),
      ("request encoder fwd", lambda: (req_fn, (params, batch["query_tokens"]))),
      ("request encoder fwd+bwd", lambda: (
          fwd_bwd(lambda p: req_fn(p, batch["query_tokens"])), (params,))),
      ("quantizer fwd", lambda: (quant_fn, (z_base, codebooks, gamma_q))),
      ("quantizer fwd+bwd", lambda: (fwd_bwd(quant_fn), (z_base, codebooks, gamma_q))),
      ("decoder fwd", lambda: (dec_fn, (params, request.z_q, request.states, prefix))),
      ("decoder fwd+bwd", lambda: (fwd_bwd(dec_fn),
                                   (params, request.z_q, request.states, prefix))),
      ("losses fwd", lambda: (loss_fn, (loss_inputs,))),
      ("losses fwd+bwd", lambda: (jax.grad(loss_fn), (loss_inputs,))),
      ("loss_and_grads (no optimizer)", lambda: (lag, (params, batch, rng, state.step))),
      ("optimizer update", lambda: (opt_fn, (grads, state.opt_state, params))),
  ]
  print(f"\n(b) sub-parts, each its own jit (best of 3 windows of {args.steps} calls); "
        f"share = time / full step ({step_seconds * 1e3:.1f} ms)")
  print(f"  {'part':<31}{'ms':>8}{'share':>8}{'GFLOP':>8}{'GFLOP/s':>9}{'MB acc':>8}")
  for name, make in items:
    fn, a = make()
    compiled = jax.jit(fn).lower(*a).compile()
    flops, nbytes = _cost(compiled)
    jax.block_until_ready(compiled(*a))
    sec = _best_of(lambda: jax.block_until_ready(compiled(*a)), args.steps)
    print(f"  {name:<31}{sec * 1e3:>8.2f}{sec / step_seconds:>8.1%}{flops / 1e9:>8.3f}"
          f"{flops / sec / 1e9:>9.1f}{nbytes / 1e6:>8.1f}")
  print("  (fwd+bwd parts use sum-of-squares of their outputs as the scalar; encoder "
        "parts differentiate all params)")


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default=str(REPO_ROOT / "configs" / "default.py"))
  parser.add_argument("--batch_size", type=int, default=0, help="0 = the config's")
  parser.add_argument("--steps", type=int, default=20)
  parser.add_argument("--rounds", type=int, default=1, help="(c): rounds over the variants")
  parser.add_argument("--variants", default=",".join(VARIANTS))
  parser.add_argument("--no_parts", action="store_true")
  parser.add_argument("--no_threads", action="store_true")
  parser.add_argument("--heap_malloc", action="store_true",
                      help="(a), (b) in this process with common.keep_freed_memory_in_heap")
  parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    return child(args)
  if args.heap_malloc:
    from common import keep_freed_memory_in_heap
    assert keep_freed_memory_in_heap(), "not glibc"

  import jax
  from common import machine_description, matmul_peak_flops
  config, model, optimizer, params, state, step, batch = _setup(args.config, args.batch_size)
  print(f"machine: {machine_description()}; {len(os.sched_getaffinity(0))} usable cores, "
        f"load average {os.getloadavg()[0]:.2f}; XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
  m = config.model
  n_params = sum(x.size for x in jax.tree.leaves(params))
  print(f"config: {args.config}  encoder={m.encoder} d={m.d_model} layers="
        f"{m.encoder_layers}+{m.decoder_layers}  params {n_params / 1e6:.2f}M  batch "
        f"{config.train.global_batch_size} x (item {config.data.max_item_len}, request "
        f"{config.data.max_query_len})")
  rng = jax.random.PRNGKey(1)
  # Cost analysis on the un-donated lowering (the step below consumes `state`).
  compiled, one = _step_runner(step, state, batch, rng)
  flops, nbytes = _cost(compiled)
  r0 = resource.getrusage(resource.RUSAGE_SELF)
  seconds = _best_of(one, args.steps)
  r1 = resource.getrusage(resource.RUSAGE_SELF)
  calls = 3 * args.steps
  peak = matmul_peak_flops()
  print("\n(a) compiled train step (XLA cost analysis)")
  print(f"  FLOPs/step {flops / 1e9:.3f} G   bytes accessed {nbytes / 1e6:.1f} MB   "
        f"arithmetic intensity {flops / nbytes:.1f} FLOP/B")
  print(f"  step {seconds * 1e3:.1f} ms (best window)  achieved {flops / seconds / 1e9:.1f} "
        f"GFLOP/s  matmul peak {peak / 1e9:.1f} GFLOP/s  utilisation {flops / seconds / peak:.1%}")
  print(f"  CPU per step (all windows): user {(r1.ru_utime - r0.ru_utime) / calls * 1e3:.1f} ms"
        f"  sys {(r1.ru_stime - r0.ru_stime) / calls * 1e3:.1f} ms")
  mem = compiled.memory_analysis()
  if mem is not None:
    print(f"  memory: temporaries {mem.temp_size_in_bytes / 1e6:.1f} MB, arguments "
          f"{mem.argument_size_in_bytes / 1e6:.1f} MB, outputs {mem.output_size_in_bytes / 1e6:.1f} MB"
          " per call")
  print("  HLO instructions by opcode (compiled step): " +
        ", ".join(f"{op} {n}" for op, n in hlo_opcodes(compiled, 16)))
  trace_breakdown(compiled, one)
  if not args.no_parts:
    # A fresh state (the timed one was donated away).
    _, _, _, params, state, _, _ = _setup(args.config, args.batch_size)
    parts(args, config, model, optimizer, params, state, batch, seconds, flops)
  if not args.no_threads:
    thread_comparison(args)


if __name__ == "__main__":
  main()

"""Times the train step, the TransE step and full-ranking evaluation for a config, and where the
step's time goes (per loss term, forward+backward). Warm-up (compilation) excluded; medians of
several runs; prints one JSON object, with the machine it ran on (cikg_jax.runtime.machine: CPU
model, vector extensions, cores, load averages, jax/jaxlib/torch versions).

  python experiments/bench.py --config=configs/dbbook2014.py [--config.model.backend=segment]
  python experiments/bench.py --config=configs/lightgcn.py:dbbook2014 --repeats=20
  python experiments/bench.py --config=configs/kgat.py:dbbook2014 --compare   # TransR variants
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cikg_jax import runtime  # noqa: E402

if not runtime.nvidia_gpu_visible():
  runtime.set_xla_cpu_flags()  # as cikg_jax/main.py: before JAX creates its CPU client

from absl import app, flags, logging  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from ml_collections import config_flags  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from cikg_jax import evaluation  # noqa: E402
from cikg_jax.data import sampling  # noqa: E402
from cikg_jax.graphs import propagation as prop  # noqa: E402
from cikg_jax.models import cikgrec, losses  # noqa: E402
from cikg_jax.training import steps, train  # noqa: E402
from experiments import roofline, runner  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", "configs/dbbook2014.py", "Config to benchmark.")
flags.DEFINE_integer("repeats", 10, "Timed repetitions per measurement (median reported).")
flags.DEFINE_bool(
  "profile",
  True,
  "Also time each loss term and the propagation alone, and the "
  "per-term roofline table (FLOPs, bytes, time, fraction of the roofline).",
)
flags.DEFINE_bool(
  "compare",
  False,
  "Also time, alternating in this process: the step with jax.random's rolled threefry draws and "
  "XLA's default scheduler, each of those changes alone, the step with autodiff's InfoNCE "
  "(losses.FUSED_INFO_NCE=False), and the default step (the fused InfoNCE on CPU); for a model "
  "with TransR (KGAT), its step with one relation matrix gathered per row against "
  "losses.grouped_matmul.",
)

flags.DEFINE_string(
  "release",
  "",
  "Path of a CIKGRec release checkout: instead of the benchmarks, time this code's train step "
  "and the release's (experiments/bench_release.py's step, in a --release_python process) one "
  "after the other, --pairs times, and print both medians and the median of the per-pair ratios.",
)
flags.DEFINE_string(
  "release_python", "python", "Command line of a Python with torch and torch_geometric."
)
flags.DEFINE_integer("pairs", 20, "Steps of each implementation with --release.")

DEFAULT_SCHEDULER = {"xla_cpu_scheduler_type": "CPU_SCHEDULER_TYPE_DEFAULT"}

# Run by --release_python: the release's step of experiments/bench_release.py, one per input line.
_RELEASE_SERVER = """
import json, sys, time
import torch
sys.path.insert(0, {repo!r})
from experiments.bench_release import build
from cikg_jax import runtime
torch.set_num_threads(2)
model, optimizer, (user, pos, neg), (ig, kg, cf, cikg) = build({release!r}, {dataset!r}, 2024)
model.train()
model.gmae_p = 0.3  # as bench.py's mask rate
def step():
  optimizer.zero_grad()
  loss = (model(user, pos, neg) + model.cross_domain_contrastive_loss(user, pos, ig, kg, cf)
          + model.interest_recon_loss(cikg))
  loss.backward()
  optimizer.step()
  return float(loss.detach())
step()
print("ready " + json.dumps(dict(torch=torch.__version__, threads=torch.get_num_threads(),
                                 machine=runtime.machine())), flush=True)
for _ in sys.stdin:
  t = time.perf_counter()
  step()
  print(time.perf_counter() - t, flush=True)
"""


def _median_seconds(fn, repeats):
  jax.block_until_ready(fn())  # warm-up / compile
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def bench(config, repeats: int, profile: bool, compare: bool = False):
  ds, config, net, graphs = steps.setup(config)
  tx, kge_tx = steps.make_optimizers(config)
  state = steps.create_train_state(jax.random.PRNGKey(0), net, tx, kge_tx, config.kge.use)
  samplers = train.make_samplers(config, ds, config.kge.use)
  cf_epoch = sampling.CF_EPOCHS[config.train.get("cf_sampling", "interactions")]
  batches = cf_epoch(
    ds.train, samplers["sampler"], config.train.batch_size, np.random.default_rng(0)
  )
  batch = {k: v[0] for k, v in batches.items()}
  epoch_graphs = steps.make_epoch_graphs_fn(net)
  cikg = hasattr(graphs, "ops")  # CIKGRec's graphs (the baselines': their own)
  step_graphs = graphs if epoch_graphs is None else epoch_graphs(state.params, graphs, 1)
  rate = np.full(1, 0.3, np.float32)  # the mask rate of every timed step
  step = jax.jit(steps.make_train_step(net, tx, steps.epoch_schedule(rate, 1)))
  key = jax.random.PRNGKey(1)
  out = {
    "machine": runtime.machine(),
    "commit": runner.git_commit(),
    "dataset": ds.name,
    "backend": net.backend,
    "info_nce": "fused" if losses.fused_info_nce() else "autodiff",
    "xla_flags": os.environ.get("XLA_FLAGS", ""),
    "devices": [str(d) for d in jax.devices()],
    "model": steps.model_name(config),
    "n_nodes": ds.n_nodes,
    "terms": [
      t
      for t, on in (
        ("bpr", True),
        ("cl", config.cl.weight > 0),
        ("uir", config.uir.weight > 0),
        ("kge", config.kge.use),
      )
      if on
    ],
  }
  if cikg:
    out["cikg_edges"] = int(graphs.ops["cikg"].graph.n_edge[0])
  out["step_seconds_median"] = _median_seconds(
    lambda: step(state, batch, key, step_graphs)[1]["loss"], repeats
  )
  if compare and config.cl.weight > 0:
    # Alternating rounds in this process, medians of the round medians. Each variant is compiled
    # with jax.random's draws or the unrolled ones (propagation.uniform; the same values), XLA's
    # default scheduler or the one runtime.set_xla_cpu_flags picks (the same values), and autodiff's
    # InfoNCE or the backend's default (the fused pass on CPU; equal to float32 rounding).
    args = (state, batch, key, graphs)
    autodiff = dict(fused=False)
    variants = {
      "before": _compiled_step(
        net, tx, rate, args, jax_random=True, options=DEFAULT_SCHEDULER, **autodiff
      ),
      "unrolled_draws": _compiled_step(net, tx, rate, args, options=DEFAULT_SCHEDULER, **autodiff),
      "memory_scheduler": _compiled_step(net, tx, rate, args, jax_random=True, **autodiff),
      "autodiff_info_nce": _compiled_step(net, tx, rate, args, **autodiff),
      "now": _compiled_step(net, tx, rate, args),
    }
    rounds = {k: [] for k in variants}
    for _ in range(3):
      for k, f in variants.items():
        rounds[k].append(_median_seconds(lambda f=f: f(*args)[1]["loss"], repeats))
    out["step_rounds_seconds"] = rounds
    out["step_rounds_median"] = {k: statistics.median(v) for k, v in rounds.items()}
    out["step_speedup_over_before"] = (
      out["step_rounds_median"]["before"] / out["step_rounds_median"]["now"]
    )
  out["steps_per_epoch"] = int(batches["users"].shape[0])
  epoch = out["step_seconds_median"] * out["steps_per_epoch"]
  if config.kge.use:
    kge_sampler = samplers["kge_sampler"]
    n_kge = kge_sampler.steps
    kb = {k: v[0] for k, v in kge_sampler.epoch(config.seed, 0).items()}
    kge_step = jax.jit(steps.make_kge_step(net, kge_tx))
    out["kge_step_seconds_median"] = _median_seconds(lambda: kge_step(state, kb)[1]["kge"], repeats)
    out["kge_steps_per_epoch"] = n_kge
    epoch += out["kge_step_seconds_median"] * n_kge
    if compare and "w_r" in state.params:  # TransR: relation-sorted tiles vs one matrix per row
      variants = {
        "per_row_matrices": _compiled_kge_step(net, kge_tx, state, kb, per_row=True),
        "now": _compiled_kge_step(net, kge_tx, state, kb),
      }
      rounds = {k: [] for k in variants}
      for _ in range(3):
        for k, f in variants.items():
          rounds[k].append(_median_seconds(lambda f=f: f(state, kb)[1]["kge"], repeats))
      out["kge_step_rounds_seconds"] = rounds
      out["kge_step_rounds_median"] = {k: statistics.median(v) for k, v in rounds.items()}
      out["kge_step_speedup_over_per_row"] = (
        out["kge_step_rounds_median"]["per_row_matrices"] / out["kge_step_rounds_median"]["now"]
      )
  if epoch_graphs is not None:
    out["epoch_graphs_seconds_median"] = _median_seconds(
      lambda: epoch_graphs(state.params, graphs, 1), repeats
    )
    epoch += out["epoch_graphs_seconds_median"]
  out["epoch_seconds_estimate"] = epoch

  eval_sets = train.make_eval_sets(ds, config.eval.chunk_size)
  embed = steps.make_embed_fn(net)
  split = ds.selection

  def run_eval():
    u, i = embed(state.params, graphs)
    return evaluation.evaluate(u, i, eval_sets[split], tuple(config.eval.ks))[0]["recall@20"]

  out["eval_seconds"] = _median_seconds(run_eval, max(3, repeats // 2))
  out["eval_split"] = split
  out["eval_users"] = int(eval_sets[split].valid.sum())

  if profile and cikg:  # the loss terms and propagation of CIKGRec's graphs
    prof = {}
    params = state.params

    def grad_time(loss_fn, argument=None):
      # graphs as an argument, as in the train step (a closure would make them constants)
      g = jax.jit(jax.grad(loss_fn))
      return _median_seconds(lambda: g(params if argument is None else argument, graphs), repeats)

    rng = jax.random.PRNGKey(2)
    bpr, cl, uir = _term_losses(net, batch, rng)
    prof["bpr_fwd_bwd"] = grad_time(bpr)
    if config.cl.weight > 0:
      prof["cl_fwd_bwd"] = grad_time(cl)
      stacked = cikgrec.with_stacked_views(graphs)
      g_st = jax.jit(jax.grad(cl))
      prof["cl_fwd_bwd_stacked_views"] = _median_seconds(lambda: g_st(params, stacked), repeats)
    if config.uir.weight > 0:
      prof["uir_fwd_bwd"] = grad_time(uir)
    for backend in prop.BACKENDS:
      f = jax.jit(jax.grad(lambda x, op: jnp.sum(prop.propagate(op, x, 1, None, backend) ** 2)))
      try:
        prof[f"one_layer_fwd_bwd_{backend}"] = _median_seconds(
          lambda: f(params["node_embedding"]["embedding"], graphs.ops["cikg"]), repeats
        )
      except Exception as e:  # e.g. a backend without a kernel on this platform
        prof[f"one_layer_fwd_bwd_{backend}"] = f"failed: {type(e).__name__}: {e}"[:200]
    out["profile_seconds"] = prof
    if config.cl.weight > 0:
      out["roofline"] = roofline.measure(max(3, repeats // 2))
      out["terms"] = _term_table(
        config,
        net,
        cikgrec.with_stacked_views(graphs),
        params,
        batch,
        state,
        tx,
        repeats,
        out["roofline"],
      )
  out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
  return out


def _compiled_step(net, tx, rate, args, jax_random=False, fused=None, options=None):
  """The train step compiled for `args` with jax.random's draws in place of
  propagation.uniform (`jax_random`), losses.FUSED_INFO_NCE = `fused` (None: the backend's
  default) and XLA compiler `options` (e.g. DEFAULT_SCHEDULER)."""
  saved = prop.uniform, losses.FUSED_INFO_NCE
  try:
    if jax_random:
      prop.uniform = jax.random.uniform  # read when the step is traced
    losses.FUSED_INFO_NCE = fused
    lowered = jax.jit(steps.make_train_step(net, tx, steps.epoch_schedule(rate, 1))).lower(*args)
    return lowered.compile(options) if options else lowered.compile()
  finally:
    prop.uniform, losses.FUSED_INFO_NCE = saved


def _per_row_matmul(x, w, group):
  """The per-row product that grouped_matmul replaces (--compare's baseline): one (d, k) matrix
  gathered per row."""
  return jnp.einsum("nsd,ndk->nsk", x, w[group])


def _compiled_kge_step(net, kge_tx, state, kb, per_row=False):
  """The TransE/TransR step compiled with losses.grouped_matmul, or with `per_row` products."""
  saved = losses.grouped_matmul
  try:
    if per_row:
      losses.grouped_matmul = _per_row_matmul  # read when the step is traced
    return jax.jit(steps.make_kge_step(net, kge_tx)).lower(state, kb).compile()
  finally:
    losses.grouped_matmul = saved


def _term_losses(net, batch, key):
  """Scalar losses of (params, graphs) for the BPR part, the contrastive term and the
  reconstruction (mask rate 0.3), each through the model's own method."""
  apply = lambda p, *a, method: net.apply({"params": p}, *a, method=method)
  k_edge, k_msg = jax.random.split(key)

  def bpr(p, g):
    t = apply(p, g, batch, k_edge, k_msg, method="bpr_terms")
    return t["bpr"] + t["reg"]

  cl = lambda p, g: sum(apply(p, g, batch, key, method="cl_loss"))
  uir = lambda p, g: apply(p, g, key, jnp.float32(0.3), method="uir_loss")[0]
  return bpr, cl, uir


def _term_table(config, net, graphs, params, batch, state, tx, repeats, roof):
  """FLOPs, bytes and time of each part of a step (forward+backward where it has one), and the
  fraction of the roofline reached: max(FLOPs / peak matmul rate, bytes / peak bandwidth) over
  the measured time. Bytes count each gathered row as read from memory (an upper bound where the
  (n x d) table sits in cache) and each (batch x candidates) matrix as written and read on every
  pass (4 passes: logits, exp-sum, softmax, its transpose read)."""
  n, d, nu = graphs.n_nodes, config.model.embed_dim, graphs.n_users
  layers, b = config.model.num_layers, int(batch["users"].shape[0])
  ego = params["node_embedding"]["embedding"]
  bpr, cl, uir = _term_losses(net, batch, jax.random.PRNGKey(2))
  backend = net.backend
  rows = []

  def add(name, flops, nbytes, fn, *args):
    t = _median_seconds(lambda: fn(*args), repeats)
    bound = max(
      flops / (roof["peak_matmul_gflops"] * 1e9), nbytes / (roof["peak_bandwidth_gbps"] * 1e9)
    )
    rows.append(
      {
        "term": name,
        "gflop": flops / 1e9,
        "mbytes": nbytes / 1e6,
        "ms": t * 1e3,
        "roofline_ms": bound * 1e3,
        "fraction": bound / t,
      }
    )

  def spmm_cost(op, k):  # k layers forward + backward: 2 E d flops, index/weight/row reads
    e = int(op.graph.n_edge[0])
    return 2 * k * 2 * e * d, 2 * k * (e * 8 + e * d * 4 + op.n_nodes * d * 4)

  views = graphs.ops["views"]
  sq = lambda f: jax.jit(jax.grad(lambda x, g: jnp.sum(f(x, g) ** 2)))
  for v in cikgrec.CL_VIEWS:
    f = sq(lambda x, g, v=v: prop.propagate(g.ops[v], x, 1, None, backend))
    add(f"view {v}: one layer", *spmm_cost(graphs.ops[v], 1), f, ego, graphs)
  f = sq(
    lambda x, g: prop.propagate(g.ops["views"], jnp.concatenate([x] * 3), layers, None, backend)
  )
  add(f"3 views stacked: {layers} layers", *spmm_cost(views, layers), f, ego, graphs)
  f = sq(
    lambda x, g: sum(prop.propagate(g.ops[v], x, layers, None, backend) for v in cikgrec.CL_VIEWS)
  )
  add(f"3 views separate: {layers} layers", *spmm_cost(views, layers), f, ego, graphs)
  noise = jax.jit(
    lambda x, k: [cikgrec.simgcl_noise(k, config.cl.eps)(layer, x) for layer in range(layers)]
  )
  add(
    f"SimGCL noise: {layers} draws of (n x d)",
    0,
    layers * n * d * 4 * 3,
    noise,
    ego,
    jax.random.PRNGKey(3),
  )
  uniform = prop.uniform
  prop.uniform = jax.random.uniform  # read when traced: jax.random's rolled threefry loop
  noise_before = jax.jit(
    lambda x, k: [cikgrec.simgcl_noise(k, config.cl.eps)(layer, x) for layer in range(layers)]
  )
  jax.block_until_ready(noise_before(ego, jax.random.PRNGKey(3)))
  prop.uniform = uniform
  add(
    f"SimGCL noise, jax.random draws: {layers} draws of (n x d)",
    0,
    layers * n * d * 4 * 3,
    noise_before,
    ego,
    jax.random.PRNGKey(3),
  )
  z = jnp.concatenate([ego] * 3)
  z = z * jax.lax.rsqrt(jnp.sum(z * z, axis=1, keepdims=True))
  users, pos, mask = batch["users"], batch["pos"], batch["mask"]

  def nce(z):
    z1, z2, z3 = z[:n], z[n : 2 * n], z[2 * n :]
    return losses.info_nce(z1[users], z2[:nu], users, mask, config.cl.tau) + losses.info_nce(
      z1[nu + pos], z3[nu:], pos, mask, config.cl.tau
    )

  cands = nu + (n - nu)
  nce_cost = (6 * b * cands * d, 4 * b * cands * 4 * 2 + 3 * cands * d * 4)
  saved = losses.FUSED_INFO_NCE
  nce_grad = {}
  for fused in (False, True):
    losses.FUSED_INFO_NCE = fused  # read when traced
    nce_grad[fused] = jax.jit(jax.grad(nce))
    jax.block_until_ready(nce_grad[fused](z))
  losses.FUSED_INFO_NCE = saved
  shape = f"{b} x ({nu} + {n - nu}) x {d}"
  add(f"InfoNCE products, autodiff: {shape}", *nce_cost, nce_grad[False], z)
  add("InfoNCE products, fused pass (CPU default)", *nce_cost, nce_grad[True], z)
  views_cost = spmm_cost(views, layers)
  add(
    "contrastive term (all of it)",
    views_cost[0] + nce_cost[0],
    views_cost[1] + nce_cost[1] + layers * n * d * 4 * 3,
    jax.jit(jax.grad(cl)),
    params,
    graphs,
  )
  cikg = graphs.ops["cikg"]
  fl, by = spmm_cost(cikg, layers)
  add(f"BPR (CIKG, {layers} layers)", fl, by, jax.jit(jax.grad(bpr)), params, graphs)
  if config.uir.weight > 0:
    k = config.uir.enc_layers + config.uir.dec_layers
    fl, by = spmm_cost(cikg, k)
    add(
      f"UIR ({k} layers + (n x d)(d x d))",
      fl + 3 * 2 * n * d * d,
      by,
      jax.jit(jax.grad(uir)),
      params,
      graphs,
    )
  n_par = sum(x.size for x in jax.tree_util.tree_leaves(params))
  grads = jax.tree_util.tree_map(jnp.ones_like, params)
  adam = jax.jit(lambda g, s, p: optax.apply_updates(p, tx.update(g, s, p)[0]))
  add(
    f"Adam ({n_par / 1e6:.2f} M parameters)",
    12 * n_par,
    7 * 4 * n_par,
    adam,
    grads,
    state.opt_state,
    params,
  )
  return rows


def paired_with_release(config, release: str, release_python: str, pairs: int):
  """This code's train step and the release's, alternating step by step (ours, release, ours, ...)
  so that both see the same machine state; the release runs in its own process and waits on a
  pipe while ours runs. Returns both medians, the median of the per-pair ratios and the load."""
  import shlex
  import subprocess

  ds, config, net, graphs = steps.setup(config)
  tx, kge_tx = steps.make_optimizers(config)
  state = steps.create_train_state(jax.random.PRNGKey(0), net, tx, kge_tx, config.kge.use)
  sampler = sampling.NegativeSampler(ds.train, ds.n_users, ds.n_items)
  batches = sampling.bpr_epoch(ds.train, sampler, config.train.batch_size, np.random.default_rng(0))
  batch = {k: v[0] for k, v in batches.items()}
  step = jax.jit(
    steps.make_train_step(net, tx, steps.epoch_schedule(np.full(1, 0.3, np.float32), 1))
  )
  key = jax.random.PRNGKey(1)
  ours = lambda: jax.block_until_ready(step(state, batch, key, graphs)[1]["loss"])
  for _ in range(3):  # compilation, then the allocator's first growth
    ours()
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  code = _RELEASE_SERVER.format(repo=repo, release=os.path.abspath(release), dataset=ds.name)
  server = subprocess.Popen(
    shlex.split(release_python) + ["-c", code],
    stdin=subprocess.PIPE,
    stdout=subprocess.PIPE,
    stderr=subprocess.DEVNULL,
    text=True,
  )
  try:
    while True:
      line = server.stdout.readline()
      if line.startswith("ready"):
        release_side = json.loads(line[len("ready") :])
        break
      if server.poll() is not None:
        raise RuntimeError("the release process ended before its first step")
    load_before = open("/proc/loadavg").read().split()[:3]
    mine, theirs = [], []
    for _ in range(pairs):
      t0 = time.perf_counter()
      ours()
      mine.append(time.perf_counter() - t0)
      server.stdin.write("step\n")
      server.stdin.flush()
      theirs.append(float(server.stdout.readline()))
    load_after = open("/proc/loadavg").read().split()[:3]
  finally:
    server.stdin.close()
    server.wait()
  ratios = [r / m for m, r in zip(mine, theirs)]
  return {
    "machine": runtime.machine(),
    "release_torch": release_side["torch"],
    "release_threads": release_side["threads"],
    "commit": runner.git_commit(),
    "dataset": ds.name,
    "pairs": pairs,
    "info_nce": "fused" if losses.fused_info_nce() else "autodiff",
    "xla_flags": os.environ.get("XLA_FLAGS", ""),
    "cikg_jax_step_seconds_median": statistics.median(mine),
    "release_step_seconds_median": statistics.median(theirs),
    "ratio_of_medians": statistics.median(theirs) / statistics.median(mine),
    "ratio_median_of_pairs": statistics.median(ratios),
    "ratio_quartiles": statistics.quantiles(ratios, n=4) if pairs > 1 else ratios,
    "cikg_jax_step_seconds": mine,
    "release_step_seconds": theirs,
    "loadavg_before": load_before,
    "loadavg_after": load_after,
  }


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  runtime.keep_freed_memory()  # as cikg_jax/main.py does
  if FLAGS.release:
    out = paired_with_release(FLAGS.config, FLAGS.release, FLAGS.release_python, FLAGS.pairs)
  else:
    out = bench(FLAGS.config, FLAGS.repeats, FLAGS.profile, FLAGS.compare)
  print(json.dumps(out, indent=2))


if __name__ == "__main__":
  app.run(main)

"""Times the train step, the TransE step and full-ranking evaluation for a config, and where the
step's time goes (per loss term, forward+backward). Warm-up (compilation) excluded; medians of
several runs; prints one JSON object.

  python experiments/bench.py --config=configs/dbbook2014.py [--config.model.backend=segment]
  python experiments/bench.py --config=configs/lightgcn.py:dbbook2014 --repeats=20
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags, logging  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from ml_collections import config_flags  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from cikg_jax import (  # noqa: E402
  evaluation,
  host,
  losses,  # noqa: E402
  model,
  steps,
  train,
)
from cikg_jax import propagation as prop  # noqa: E402
from cikg_jax.data import sampling  # noqa: E402
from experiments import roofline  # noqa: E402

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
  "Also time the step before the speed work (allocator defaults, "
  "previous InfoNCE), now, and with the stacked view operator, alternating.",
)


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
  sampler = sampling.NegativeSampler(ds.train, ds.n_users, ds.n_items)
  batches = sampling.bpr_epoch(ds.train, sampler, config.train.batch_size, np.random.default_rng(0))
  batch = {k: v[0] for k, v in batches.items()}
  rate = np.full(1, 0.3, np.float32)  # the mask rate of every timed step
  step = jax.jit(steps.make_train_step(net, tx, rate, 1))
  key = jax.random.PRNGKey(1)
  out = {
    "dataset": ds.name,
    "backend": net.backend,
    "devices": [str(d) for d in jax.devices()],
    "n_nodes": ds.n_nodes,
    "cikg_edges": int(graphs.ops["cikg"].graph.n_edge[0]),
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
  out["step_seconds_median"] = _median_seconds(
    lambda: step(state, batch, key, graphs)[1]["loss"], repeats
  )
  if compare and config.cl.weight > 0:
    # Alternating rounds in this process, medians of the round medians: the step before the speed
    # work (glibc's allocator defaults, the previous InfoNCE), now, and now with the opt-in stacked
    # view operator (model.with_stacked_views).
    info_nce = losses.info_nce
    losses.info_nce = _info_nce_before  # read when the step is traced
    step_before = jax.jit(steps.make_train_step(net, tx, rate, 1))
    jax.block_until_ready(step_before(state, batch, key, graphs)[1]["loss"])
    losses.info_nce = info_nce
    stacked = model.with_stacked_views(graphs)
    rounds = {"before": [], "now": [], "now_stacked_views": []}
    for _ in range(3):
      host.restore_malloc_defaults()
      rounds["before"].append(
        _median_seconds(lambda: step_before(state, batch, key, graphs)[1]["loss"], repeats)
      )
      host.keep_freed_memory()
      rounds["now"].append(
        _median_seconds(lambda: step(state, batch, key, graphs)[1]["loss"], repeats)
      )
      rounds["now_stacked_views"].append(
        _median_seconds(lambda: step(state, batch, key, stacked)[1]["loss"], repeats)
      )
    out["step_rounds_seconds"] = rounds
    out["step_rounds_median"] = {k: statistics.median(v) for k, v in rounds.items()}
    out["step_speedup_over_before"] = (
      out["step_rounds_median"]["before"] / out["step_rounds_median"]["now"]
    )
  out["steps_per_epoch"] = int(batches["users"].shape[0])
  epoch = out["step_seconds_median"] * out["steps_per_epoch"]
  if config.kge.use:
    kge_sampler = sampling.KGESampler(ds, config.views, config.kge.batch_size)
    n_kge = kge_sampler.steps
    kb = {k: v[0] for k, v in kge_sampler.epoch(config.seed, 0).items()}
    kge_step = jax.jit(steps.make_kge_step(net, kge_tx))
    out["kge_step_seconds_median"] = _median_seconds(lambda: kge_step(state, kb)[1]["kge"], repeats)
    out["kge_steps_per_epoch"] = n_kge
    epoch += out["kge_step_seconds_median"] * n_kge
  out["epoch_seconds_estimate"] = epoch

  eval_sets = train.make_eval_sets(ds, config)
  embed = steps.make_embed_fn(net)
  split = ds.selection

  def run_eval():
    u, i = embed(state.params, graphs)
    return evaluation.evaluate(u, i, eval_sets[split], tuple(config.eval.ks))[0]["recall@20"]

  out["eval_seconds"] = _median_seconds(run_eval, max(3, repeats // 2))
  out["eval_split"] = split
  out["eval_users"] = int(eval_sets[split].valid.sum())

  if profile:
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
      stacked = model.with_stacked_views(graphs)
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
        model.with_stacked_views(graphs),
        params,
        batch,
        state,
        tx,
        repeats,
        out["roofline"],
      )
  out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
  return out


def _info_nce_before(anchors, candidates, positive_index, mask, tau, count=None):
  """losses.info_nce before the speed work: the positive gathered from the scaled product."""
  logits = anchors @ candidates.T / tau
  pos = jnp.take_along_axis(logits, positive_index[:, None], axis=1)[:, 0]
  lse = jnp.log(jnp.sum(jnp.exp(logits - 1.0 / tau), axis=1)) + 1.0 / tau
  return losses._masked_mean(lse - pos, mask, count)


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
  for v in model.CL_VIEWS:
    f = sq(lambda x, g, v=v: prop.propagate(g.ops[v], x, 1, None, backend))
    add(f"view {v}: one layer", *spmm_cost(graphs.ops[v], 1), f, ego, graphs)
  f = sq(
    lambda x, g: prop.propagate(g.ops["views"], jnp.concatenate([x] * 3), layers, None, backend)
  )
  add(f"3 views stacked: {layers} layers", *spmm_cost(views, layers), f, ego, graphs)
  f = sq(
    lambda x, g: sum(prop.propagate(g.ops[v], x, layers, None, backend) for v in model.CL_VIEWS)
  )
  add(f"3 views separate: {layers} layers", *spmm_cost(views, layers), f, ego, graphs)
  noise = jax.jit(
    lambda x, k: [model.simgcl_noise(k, config.cl.eps)(layer, x) for layer in range(layers)]
  )
  add(
    f"SimGCL noise: {layers} draws of (n x d)",
    0,
    layers * n * d * 4 * 3,
    noise,
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
  add(f"InfoNCE products: {b} x ({nu} + {n - nu}) x {d}", *nce_cost, jax.jit(jax.grad(nce)), z)
  info_nce = losses.info_nce
  losses.info_nce = _info_nce_before
  nce_before = jax.jit(jax.grad(nce))
  jax.block_until_ready(nce_before(z))
  losses.info_nce = info_nce
  add("InfoNCE products, before", *nce_cost, nce_before, z)
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


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  host.keep_freed_memory()  # as cikg_jax/main.py does
  print(json.dumps(bench(FLAGS.config, FLAGS.repeats, FLAGS.profile, FLAGS.compare), indent=2))


if __name__ == "__main__":
  app.run(main)

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
import numpy as np  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from cikg_jax import evaluation, host, model, train  # noqa: E402
from cikg_jax import propagation as prop  # noqa: E402
from cikg_jax.data import sampling  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", "configs/dbbook2014.py", "Config to benchmark.")
flags.DEFINE_integer("repeats", 10, "Timed repetitions per measurement (median reported).")
flags.DEFINE_bool("profile", True, "Also time each loss term and the propagation alone.")


def _median_seconds(fn, repeats):
  jax.block_until_ready(fn())  # warm-up / compile
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def bench(config, repeats: int, profile: bool):
  ds, config, graphs = train.setup(config, verbose=False)
  tx, kge_tx = train.make_optimizers(config)
  state = train.create_train_state(jax.random.PRNGKey(0), ds, config, tx, kge_tx)
  sampler = sampling.NegativeSampler(ds.train, ds.n_users, ds.n_items)
  batches = sampling.bpr_epoch(ds.train, sampler, config.train.batch_size,
                               np.random.default_rng(0))
  batch = {k: v[0] for k, v in batches.items()}
  batch["mask_rate"] = np.float32(0.3)
  step = jax.jit(train.make_train_step(config, tx))
  key = jax.random.PRNGKey(1)
  out = {"dataset": ds.name, "backend": model._backend(config),
         "devices": [str(d) for d in jax.devices()], "n_nodes": ds.n_nodes,
         "cikg_edges": int(graphs.ops["cikg"].graph.n_edge[0]),
         "terms": [t for t, on in (("bpr", True), ("cl", config.cl.weight > 0),
                                   ("uir", config.uir.weight > 0), ("kge", config.kge.use)) if on]}
  out["step_seconds_median"] = _median_seconds(lambda: step(state, batch, key, graphs)[1]["loss"],
                                               repeats)
  out["steps_per_epoch"] = int(batches["users"].shape[0])
  epoch = out["step_seconds_median"] * out["steps_per_epoch"]
  if config.kge.use:
    triples, n_for_steps = sampling.kge_triples(ds, config.views)
    n_kge = max(1, (n_for_steps or len(triples)) // config.kge.batch_size)
    kb = sampling.kge_epoch(triples, 1, config.kge.batch_size, ds.item_offset,
                            ds.item_offset + ds.n_entities, np.random.default_rng(0))
    kb = {k: v[0] for k, v in kb.items()}
    kge_step = jax.jit(train.make_kge_step(config, kge_tx))
    out["kge_step_seconds_median"] = _median_seconds(lambda: kge_step(state, kb)[1]["kge"],
                                                     repeats)
    out["kge_steps_per_epoch"] = n_kge
    epoch += out["kge_step_seconds_median"] * n_kge
  out["epoch_seconds_estimate"] = epoch

  eval_sets = train.make_eval_sets(ds, config)
  embed = jax.jit(lambda p, g: model.final_embeddings(p, g, config))
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

    def grad_time(loss_fn):
      # graphs as an argument, as in the train step (a closure would make them constants)
      g = jax.jit(jax.grad(loss_fn))
      return _median_seconds(lambda: g(params, graphs), repeats)

    rng = jax.random.PRNGKey(2)
    cfg_bpr = _only(config, "bpr")
    prof["bpr_fwd_bwd"] = grad_time(lambda p, g: model.total_loss(p, g, batch, rng, cfg_bpr)[0])
    if config.cl.weight > 0:
      prof["cl_fwd_bwd"] = grad_time(lambda p, g: sum(model.cl_loss(p, g, batch, rng, config)))
    if config.uir.weight > 0:
      prof["uir_fwd_bwd"] = grad_time(
          lambda p, g: model.uir_loss(p, g, rng, jnp.float32(0.3), config)[0])
    for backend in prop.BACKENDS:
      f = jax.jit(jax.grad(lambda x, op: jnp.sum(prop.propagate(op, x, 1, None, backend) ** 2)))
      try:
        prof[f"one_layer_fwd_bwd_{backend}"] = _median_seconds(
            lambda: f(params["embedding"], graphs.ops["cikg"]), repeats)
      except Exception as e:  # e.g. a backend without a kernel on this platform
        prof[f"one_layer_fwd_bwd_{backend}"] = f"failed: {type(e).__name__}: {e}"[:200]
    out["profile_seconds"] = prof
  out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
  return out


def _only(config, term):
  c = config.copy_and_resolve_references()
  if term == "bpr":
    c.cl.weight = 0.0
    c.uir.weight = 0.0
  return c


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  if jax.default_backend() == "cpu":
    host.keep_freed_memory()
  print(json.dumps(bench(FLAGS.config, FLAGS.repeats, FLAGS.profile), indent=2))


if __name__ == "__main__":
  app.run(main)

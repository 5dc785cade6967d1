"""Run in a fresh process with XLA_FLAGS=--xla_force_host_platform_device_count=4 (tests/
test_parallel.py): compares the pmap data-parallel step and training run with one device."""

import json
import sys

import jax
import numpy as np
import optax

from cikg_jax.parallel import data_parallel
from cikg_jax.training import steps, train
from configs import tiny


def main(tmp):
  assert jax.local_device_count() == 4, jax.devices()
  c = tiny.get_config()
  c.synthetic_dir = f"{tmp}/data"
  c.train.plot = False
  ds, c, net, graphs = steps.setup(c)
  tx, kge_tx = steps.make_optimizers(c)
  state = steps.create_train_state(jax.random.PRNGKey(0), net, tx, kge_tx, c.kge.use)
  rates = np.full(3, 0.4, np.float32)  # the mask rate of every epoch
  rng = np.random.default_rng(0)
  batch = {
    "users": rng.integers(ds.n_users, size=256).astype(np.int32),
    "pos": rng.integers(ds.n_items, size=256).astype(np.int32),
    "neg": rng.integers(ds.n_items, size=256).astype(np.int32),
    "mask": (np.arange(256) < 200).astype(np.float32),
  }  # a padded last batch
  key = jax.random.PRNGKey(3)
  out = {}
  # SGD makes the parameter change the gradient itself; Adam's first step (g / (|g| + eps))
  # magnifies float-order noise in near-zero gradients, so it gets a relative bound.
  for name, opt in (("sgd", optax.sgd(1.0)), ("adam", tx)):
    s0 = steps.create_train_state(jax.random.PRNGKey(0), net, opt, kge_tx, c.kge.use)
    single, m1 = jax.jit(steps.make_train_step(net, opt, steps.epoch_schedule(rates, 1)))(
      s0, batch, key, graphs
    )
    p_step, p_kge = data_parallel.make_steps(
      net, opt, kge_tx, steps.epoch_schedule(rates, 1), c.kge.use
    )
    multi, m4 = p_step(
      data_parallel.replicate(s0, 4), data_parallel.shard_batch(batch, 4), key, graphs
    )
    multi = data_parallel.unreplicate(multi)
    out[name] = {
      "max_param_diff": max(
        float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
        for a, b in zip(
          jax.tree_util.tree_leaves(single.params), jax.tree_util.tree_leaves(multi.params)
        )
      ),
      "max_param_change": float(
        np.max(
          np.abs(
            np.asarray(single.params["node_embedding"]["embedding"])
            - np.asarray(s0.params["node_embedding"]["embedding"])
          )
        )
      ),
    }
  out["metrics_single"] = {k: float(v) for k, v in m1.items()}
  out["metrics_multi"] = {k: float(np.asarray(v)[0]) for k, v in m4.items()}
  kb = {
    "head": rng.integers(ds.n_nodes, size=256).astype(np.int32),
    "relation": rng.integers(ds.n_relations + 1, size=256).astype(np.int32),  # paper views
    "tail": rng.integers(ds.n_nodes, size=256).astype(np.int32),
    "neg_tail": rng.integers(ds.n_nodes, size=256).astype(np.int32),
  }
  k1, _ = jax.jit(steps.make_kge_step(net, kge_tx))(state, kb)
  k4, _ = p_kge(data_parallel.replicate(state, 4), data_parallel.shard_batch(kb, 4))
  k4 = data_parallel.unreplicate(k4)
  out["kge_max_param_change"] = float(
    np.max(
      np.abs(
        np.asarray(k1.params["node_embedding"]["embedding"])
        - np.asarray(state.params["node_embedding"]["embedding"])
      )
    )
  )
  out["kge_max_param_diff"] = max(
    float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
    for a, b in zip(jax.tree_util.tree_leaves(k1.params), jax.tree_util.tree_leaves(k4.params))
  )
  runs = {}
  for n in (1, 4):
    c.parallel.num_devices = n
    c.train.max_epochs = 2
    res = train.train_and_evaluate(c, f"{tmp}/run{n}")
    runs[n] = {"test": res["test"], "devices": res["data_parallel_devices"]}
  out["runs"] = runs
  print("RESULT " + json.dumps(out))


if __name__ == "__main__":
  main(sys.argv[1])

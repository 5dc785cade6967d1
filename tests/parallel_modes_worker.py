"""Run in a fresh process with XLA_FLAGS=--xla_force_host_platform_device_count=4
(tests/test_parallel_modes.py): compares the "graph" and "data_graph" modes with one device and
prints one line `RESULT {json}`. argv: TMP PART, PART "quick" (the default suite's checks) or
"full" (the slow ones)."""

import json
import os
import sys
import time

import jax
import numpy as np
import optax

from cikg_jax.parallel import graph_parallel as gp
from cikg_jax.training import steps, train
from configs import lightgcn, tiny

MESHES = {
  "graph1": {"graph": 1},
  "graph2": {"graph": 2},
  "graph3": {"graph": 3},  # the tiny graph's 592 nodes padded to 594 = 3 x 198 rows
  "graph4": {"graph": 4},
  "data2xgraph2": {"data": 2, "graph": 2},
  "data1xgraph4": {"data": 1, "graph": 4},
  "data4xgraph1": {"data": 4, "graph": 1},
}


def leaves(tree):
  return [np.asarray(x, np.float64) for x in jax.tree_util.tree_leaves(tree)]


def config(tmp, model="cikgrec", backend="bcsr", dropout=False):
  c = tiny.get_config() if model == "cikgrec" else lightgcn.get_config("synthetic")
  c.synthetic_dir = f"{tmp}/data"
  c.train.plot = False
  c.model.backend = backend
  if dropout:  # the main graph's edge and message dropout too (the tiny config has only UIR's)
    c.model.edge_dropout, c.model.message_dropout = 0.1, 0.1
  return c


def batch_for(ds, rng, n=256, real=200):
  return {
    "users": rng.integers(ds.n_users, size=n).astype(np.int32),
    "pos": rng.integers(ds.n_items, size=n).astype(np.int32),
    "neg": rng.integers(ds.n_items, size=n).astype(np.int32),
    "mask": (np.arange(n) < real).astype(np.float32),  # a padded last batch
  }


def compare_step(
  c, meshes, optimizers=("sgd",), exchange="all_gather", node_order="identity", split=False
):
  """One train step of every mesh against the single-device step: the logged terms, and the
  parameter change (with SGD at lr 1, the gradient itself; with Adam, its first update). `split`:
  the mesh runs the split step (a program per loss part, config.train.split_step)."""
  ds, c, net, graphs = steps.setup(c)
  _, kge_tx = steps.make_optimizers(c)
  rates = np.full(3, 0.4, np.float32)
  batch = batch_for(ds, np.random.default_rng(0))
  key = jax.random.PRNGKey(3)
  out = {}
  for opt_name in optimizers:
    tx = optax.sgd(1.0) if opt_name == "sgd" else steps.make_optimizers(c)[0]
    s0 = steps.create_train_state(jax.random.PRNGKey(0), net, tx, kge_tx, c.kge.use)
    one, t1 = jax.jit(steps.make_train_step(net, tx, steps.epoch_schedule(rates, 1)))(
      s0, batch, key, graphs
    )
    change1 = [a - b for a, b in zip(leaves(one.params), leaves(s0.params))]
    for name in meshes:
      t = time.perf_counter()
      par = gp.GraphParallel(net, graphs, gp.make_mesh(MESHES[name]), exchange, node_order)
      template = gp.state_template(net, tx, kge_tx, c.kge.use)
      make = par.make_split_train_step if split else par.make_train_step
      step = make(tx, steps.epoch_schedule(rates, 1), template)
      s, terms = step(par.place(s0), par.shard_batch(batch), key, par.graphs)
      s = par.host_view(s)
      change = [a - b for a, b in zip(leaves(s.params), leaves(s0.params))]
      out[f"{name}/{opt_name}"] = {
        "terms_single": {k: float(v) for k, v in t1.items()},
        "terms": {k: float(v) for k, v in terms.items()},
        "max_change": max(float(np.max(np.abs(x))) for x in change1),
        "max_diff": max(float(np.max(np.abs(a - b))) for a, b in zip(change, change1)),
        "seconds": time.perf_counter() - t,
        "halo": {k: op.halo for k, op in par.graphs.ops.items()},
      }
  return out


def compare_kge(c, meshes, node_order="identity"):
  """The TransE step with SGD at lr 1 (its change is the gradient) against one device."""
  ds, c, net, graphs = steps.setup(c)
  tx, kge_tx = steps.make_optimizers(c)[0], optax.sgd(1.0)
  s0 = steps.create_train_state(jax.random.PRNGKey(0), net, tx, kge_tx, True)
  rng = np.random.default_rng(1)
  kb = {
    "head": rng.integers(ds.n_nodes, size=256).astype(np.int32),
    "relation": rng.integers(net.n_relations, size=256).astype(np.int32),
    "tail": rng.integers(ds.n_nodes, size=256).astype(np.int32),
    "neg_tail": rng.integers(ds.n_nodes, size=256).astype(np.int32),
  }
  one, m1 = jax.jit(steps.make_kge_step(net, kge_tx))(s0, kb)
  change1 = [a - b for a, b in zip(leaves(one.params), leaves(s0.params))]
  out = {}
  for name in meshes:
    par = gp.GraphParallel(net, graphs, gp.make_mesh(MESHES[name]), node_order=node_order)
    step = par.make_kge_step(kge_tx, gp.state_template(net, tx, kge_tx, True))
    s, m = step(par.place(s0), par.shard_batch(kb))
    change = [a - b for a, b in zip(leaves(par.host_view(s).params), leaves(s0.params))]
    out[name] = {
      "kge_single": float(m1["kge"]),
      "kge": float(m["kge"]),
      "max_change": max(float(np.max(np.abs(x))) for x in change1),
      "max_diff": max(float(np.max(np.abs(a - b))) for a, b in zip(change, change1)),
    }
  return out


def sharding_layout(c):
  """What each of 4 devices holds in "graph" mode: its edge block of every operator and its
  rows of the table and the Adam moments."""
  c.parallel.mode = "graph"  # setup keeps the whole graphs in host memory
  ds, c, net, graphs = steps.setup(c)
  tx, kge_tx = steps.make_optimizers(c)
  par = gp.GraphParallel(net, graphs, gp.make_mesh(MESHES["graph4"]))
  host_arrays = isinstance(graphs.ops["cikg"].graph.senders, np.ndarray)
  ops = {}
  for name, op in par.graphs.ops.items():
    dense = graphs.ops[name].graph
    shards = []
    # operators placed without receivers and pairs (nothing in the step reads them): their
    # layout is checked on the same cut made in host memory
    full = gp.shard_operator(graphs.ops[name], op.n_devices) if op.receivers is None else None
    for field in ("senders", "receivers", "pair", "weight"):
      arr = getattr(op, field)
      if arr is None:
        shards.append(list(np.asarray(getattr(full, field)).reshape(op.n_devices, -1)))
        continue
      by_device = sorted(arr.addressable_shards, key=lambda s: s.index[0].start)
      shards.append([np.asarray(s.data) for s in by_device])
    devices = {str(s.device) for s in op.senders.addressable_shards}
    block = op.n_padded // op.n_devices
    edges, blocks_ok = [], True
    for k, (s, r, p, w) in enumerate(zip(*shards)):
      real = p != gp.PAD_PAIR
      blocks_ok &= bool(np.all((r >= 0) & (r < block)))
      edges += list(zip(s[real].tolist(), (r[real] + k * block).tolist(), w[real].tolist()))
    want = list(
      zip(
        np.asarray(dense.senders).tolist(),
        np.asarray(dense.receivers).tolist(),
        np.asarray(dense.edges["weight"]).tolist(),
      )
    )
    ops[name] = {
      "n_edges": len(want),
      "shard_lengths": [len(s) for s in shards[0]],
      "real_per_shard": [int(np.sum(p != gp.PAD_PAIR)) for p in shards[2]],
      "devices": len(devices),
      "receivers_in_block": blocks_ok,
      "same_edges_in_order": edges == want,
      "placed_without_receivers": op.receivers is None and op.pair is None,
    }
  state = par.place(steps.create_train_state(jax.random.PRNGKey(0), net, tx, kge_tx, c.kge.use))
  table = state.params["node_embedding"]["embedding"]
  mu = state.opt_state[0].mu["node_embedding"]["embedding"]
  nu = state.opt_state[0].nu["node_embedding"]["embedding"]
  e2d = state.params["e2d"]["kernel"]
  par3 = gp.GraphParallel(net, graphs, gp.make_mesh(MESHES["graph3"]))  # 592 rows padded to 594
  host = steps.create_train_state(jax.random.PRNGKey(0), net, tx, kge_tx, c.kge.use)
  state3 = par3.place(host)
  table3 = state3.params["node_embedding"]["embedding"]
  back = par3.host_view(state3)
  return {
    "table3_shards": [list(s.data.shape) for s in table3.addressable_shards],
    "table3_padding_zero": bool(np.all(np.asarray(table3)[ds.n_nodes :] == 0)),
    "table3_round_trip": all(
      np.array_equal(np.asarray(a), np.asarray(b))
      for a, b in zip(jax.tree_util.tree_leaves(host), jax.tree_util.tree_leaves(back))
    ),
    "graphs_on_host": host_arrays,
    "n_nodes": ds.n_nodes,
    "n_padded": par.layout.n_padded,
    "ops": ops,
    "table_global": list(table.shape),
    "table_shards": [list(s.data.shape) for s in table.addressable_shards],
    "adam_shards": [list(s.data.shape) for s in mu.addressable_shards + nu.addressable_shards],
    "table_devices": len({str(s.device) for s in table.addressable_shards}),
    "replicated_shards": [list(s.data.shape) for s in e2d.addressable_shards],
  }


def training(tmp, runs):
  """2 epochs of the tiny config (TransE included) per mode; a graph-mode run resumed from its
  epoch-0 checkpoint."""
  out = {}
  for name, (mode, n, data_devices, *layout) in runs.items():
    c = config(tmp)
    c.train.max_epochs = 2
    c.parallel.mode, c.parallel.num_devices, c.parallel.data_devices = mode, n, data_devices
    c.parallel.node_order, c.parallel.exchange = layout + ["identity", "all_gather"][len(layout) :]
    t = time.perf_counter()
    workdir = f"{tmp}/run_{name}"
    if name.endswith("_resumed"):
      c.train.max_epochs = 1
      train.train_and_evaluate(c, workdir)
      c.train.max_epochs = 2
    res = train.train_and_evaluate(c, workdir)
    with open(f"{workdir}/metrics.jsonl") as f:
      lines = [json.loads(ln) for ln in f]
    out[name] = {
      "stored_order": os.path.exists(f"{workdir}/node_order.npz"),
      "test": res["test"],
      "parallel": res["parallel"],
      "compilations": res["train_step_compilations"],
      "lines": lines,
      "seconds": time.perf_counter() - t,
    }
  return out


def main(tmp, part):
  assert jax.local_device_count() == 4, jax.devices()
  out = {}
  if part == "quick":
    out["step"] = compare_step(
      config(tmp, dropout=True), ["graph3", "graph4", "data2xgraph2"], ("sgd",)
    )
    out["kge"] = compare_kge(config(tmp), ["data2xgraph2"])
    out["sharding"] = sharding_layout(config(tmp))
    chunked = config(tmp, dropout=True)
    chunked.cl.chunk = 50  # the InfoNCE denominators over chunks of a device's rows
    out["step_chunked"] = compare_step(chunked, ["graph3", "data2xgraph2"], ("sgd",))
    out["step_halo"] = compare_step(
      config(tmp, dropout=True), ["graph3", "data2xgraph2"], ("sgd",), exchange="halo"
    )
    # rows placed in a node order (graph_parallel.NodeOrder): lookups, draws, InfoNCE ranges
    out["step_order"] = compare_step(
      config(tmp, dropout=True), ["graph3"], ("sgd",), node_order="rcm"
    )
    out["step_order"] |= {
      f"{k}+halo+chunk": v
      for k, v in compare_step(
        chunked, ["data2xgraph2"], ("sgd",), exchange="halo", node_order="balanced"
      ).items()
    }
    out["kge_order"] = compare_kge(config(tmp), ["graph3"], node_order="rcm")
    out["step_ring"] = compare_step(config(tmp, dropout=True), ["graph3"], exchange="ring")
    out["step_halo_rounds"] = compare_step(
      config(tmp, dropout=True), ["graph3"], exchange="halo_rounds"
    )
    out["step_halo_rounds"] |= {
      f"{k}+balanced+chunk": v
      for k, v in compare_step(
        chunked, ["data2xgraph2"], exchange="halo_rounds", node_order="balanced"
      ).items()
    }
    out["step_split"] = compare_step(config(tmp, dropout=True), ["data2xgraph2"], split=True)
    out["step_split"] |= {
      f"{k}+ring": v
      for k, v in compare_step(
        config(tmp, dropout=True), ["graph3"], exchange="ring", split=True
      ).items()
    }
  else:
    out["step_segment"] = compare_step(config(tmp, backend="segment", dropout=True), list(MESHES))
    out["step_bcsr"] = compare_step(
      config(tmp, dropout=True), ["graph1", "data1xgraph4", "data4xgraph1"]
    )
    out["step_adam"] = compare_step(config(tmp), ["graph4", "data2xgraph2"], ("adam",))
    out["kge"] = compare_kge(config(tmp), ["graph1", "graph3", "data4xgraph1"])
    out["step_lightgcn"] = compare_step(config(tmp, model="lightgcn"), ["graph2", "data2xgraph2"])
    out["step_halo_segment"] = compare_step(
      config(tmp, backend="segment", dropout=True), ["graph4"], exchange="halo"
    )
    ring = config(tmp, dropout=True)
    ring.cl.chunk = 50
    out["step_ring_more"] = compare_step(
      ring, ["graph2", "data2xgraph2"], exchange="ring", node_order="balanced"
    )
    out["step_ring_more"] |= compare_step(
      config(tmp, model="lightgcn"), ["graph4"], exchange="ring"
    )
    out["train"] = training(
      tmp,
      {
        "single": ("data", 1, 0),
        "graph1": ("graph", 1, 0),
        "graph2": ("graph", 2, 0),
        "graph3": ("graph", 3, 0),
        "graph4": ("graph", 4, 0),
        "data2xgraph2": ("data_graph", 4, 2),
        "data1xgraph4": ("data_graph", 4, 1),
        "data4xgraph1": ("data_graph", 4, 4),
        "graph2_resumed": ("graph", 2, 0),
        "graph3_rcm": ("graph", 3, 0, "rcm"),
        "data2xgraph2_balanced_resumed": ("data_graph", 4, 2, "balanced"),
        "graph4_ring": ("graph", 4, 0, "identity", "ring"),
        "graph4_balanced_halo_rounds": ("graph", 4, 0, "balanced", "halo_rounds"),
      },
    )
  print("RESULT " + json.dumps(out))


if __name__ == "__main__":
  main(sys.argv[1], sys.argv[2])

"""config.parallel.mode "graph" and "data_graph" (cikg_jax/parallel/graph_parallel.py) against one device,
on 4 simulated CPU devices in a subprocess (tests/parallel_modes_worker.py), plus the config,
resume and random-draw rules in this process.

Tolerances. Every mode computes the same float32 operations as one device in another summation
order: the InfoNCE denominators are summed per row block and then psum'd, the "data" shards' BPR
sums are psum'd, and the senders' cotangents arrive through a psum_scatter. Each such sum is exact
up to a few ulps (float32 eps = 1.2e-7) of its largest terms, so the loss terms get rel 1e-5. A
gradient entry sums contributions larger than itself (terms that cancel), so its error is a few
ulps of those, not of the entry: the gradients (SGD at lr 1: the parameter change is the gradient;
TransE's step too) get 1e-4 of the largest entry. Observed: terms within 3e-7 relative, gradients
within 6e-8 (CIKGRec) and 1.3e-5 (LightGCN's smaller gradients) of the largest entry; a wrong
gradient (an edge block missing, a shard counted twice) is off by O(1). Adam's first
update g / (|g| + 1e-8) turns an ulp of a near-zero gradient into a change of up to lr on that
entry, so it gets 1e-2 of the largest update, as tests/test_parallel.py does for pmap. After 2
epochs the logged terms and metrics get rel 1e-4 and the test metrics abs 2e-3 (one test user's
hit moving one rank, as for pmap); observed equal to ~2e-7.
"""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from cikg_jax.graphs import propagation as prop
from cikg_jax.parallel import graph_parallel as gp
from cikg_jax.training import rundir, steps, train
from configs import base, simgcl, tiny

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TERMS = ("loss", "bpr", "reg", "cl", "cl_user", "cl_item", "uir", "uir_masked_rows")


def _worker(tmp, part):
  env = dict(
    os.environ,
    XLA_FLAGS="--xla_force_host_platform_device_count=4",
    PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
  )
  proc = subprocess.run(
    [sys.executable, os.path.join(ROOT, "tests", "parallel_modes_worker.py"), str(tmp), part],
    env=env,
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=1800,
  )
  line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
  assert proc.returncode == 0 and line, proc.stderr[-3000:]
  return json.loads(line[0][len("RESULT ") :])


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
  return _worker(tmp_path_factory.mktemp("modes_quick"), "quick")


@pytest.fixture(scope="module")
def full(tmp_path_factory):
  return _worker(tmp_path_factory.mktemp("modes_full"), "full")


def _check_steps(cases, grad_rtol=1e-4):
  assert cases
  for name, r in cases.items():
    assert r["max_change"] > 1e-4, name  # the step did something
    assert r["max_diff"] <= grad_rtol * r["max_change"], (name, r["max_diff"], r["max_change"])
    for key, value in r["terms_single"].items():
      assert r["terms"][key] == pytest.approx(value, rel=1e-5, abs=1e-12), (name, key)
    assert set(r["terms"]) == set(r["terms_single"]), name


def _check_kge(cases):
  assert cases
  for name, r in cases.items():
    assert r["max_change"] > 1e-4, name
    assert r["max_diff"] <= 1e-4 * r["max_change"], name
    assert r["kge"] == pytest.approx(r["kge_single"], rel=1e-5), name


# ---- the default suite: one subprocess, ~30 s ----------------------------------------------------
def test_graph_modes_step_equals_single_device(quick):
  """Full CIKGRec loss (BPR with edge and message dropout, contrastive views, UIR with its edge
  dropout) on 3 devices (padded rows), 4 devices, and a 2 x 2 data x graph mesh."""
  assert set(quick["step"]) == {"graph3/sgd", "graph4/sgd", "data2xgraph2/sgd"}
  for r in quick["step"].values():
    assert set(TERMS) <= set(r["terms"])
  _check_steps(quick["step"])


def test_graph_modes_chunked_info_nce_equals_single_device(quick):
  """cl.chunk: each device's InfoNCE denominators over chunks of its rows (3 devices: blocks of
  198 rows, chunks of 50 with a partial last one) equal the single-device step (itself equal to
  the unchunked loss to float rounding, tests/test_info_nce_chunked.py)."""
  assert set(quick["step_chunked"]) == {"graph3/sgd", "data2xgraph2/sgd"}
  _check_steps(quick["step_chunked"])


def test_graph_modes_halo_exchange_equals_single_device(quick):
  """Each block receives only the remote sender rows its edges read (cikg_jax/graphs/halo.py), through
  every operator, dropout's degree draws included: the step equals one device's."""
  assert set(quick["step_halo"]) == {"graph3/sgd", "data2xgraph2/sgd"}
  for r in quick["step_halo"].values():
    assert r["halo"] and all(h > 0 for h in r["halo"].values()), r["halo"]
  _check_steps(quick["step_halo"])


def test_graph_modes_kge_step_equals_single_device(quick):
  _check_kge(quick["kge"])


def test_graph_modes_in_a_node_order_equal_single_device(quick):
  """The table's rows placed in an RCM or a balanced order (parallel.node_order): batch rows,
  interest rows and TransE triples looked up through the order, each node's dropout and noise
  draws and its InfoNCE range by node id, with the halo exchange and chunked InfoNCE too."""
  assert set(quick["step_order"]) == {"graph3/sgd", "data2xgraph2/sgd+halo+chunk"}
  _check_steps(quick["step_order"])
  _check_kge(quick["kge_order"])


def test_graph_modes_ring_exchange_equals_single_device(quick):
  """parallel.exchange=ring: each block multiplies the owners' blocks as they pass round the
  devices, and its custom backward pass returns A^T g round the other way; with dropout's degree
  draws, on 3 devices (padded rows)."""
  assert set(quick["step_ring"]) == {"graph3/sgd"}
  _check_steps(quick["step_ring"])


def test_graph_modes_halo_rounds_equal_single_device(quick):
  """parallel.exchange=halo_rounds: each owner's halo rows for a block arrive in their own
  ppermute round and are multiplied by their sub-block; the custom backward pass returns their
  cotangents the same way. On 3 devices (padded rows) and, in the balanced order (a halo below
  the block) with chunked InfoNCE, on a 2 x 2 mesh."""
  assert set(quick["step_halo_rounds"]) == {"graph3/sgd", "data2xgraph2/sgd+balanced+chunk"}
  for r in quick["step_halo_rounds"].values():
    assert r["halo"] and all(h > 0 for h in r["halo"].values()), r["halo"]
  _check_steps(quick["step_halo_rounds"])


def test_graph_modes_split_step_equals_single_device(quick):
  """config.train.split_step: a program per loss part adding into one donated gradient, then the
  update, on a data x graph mesh and with the ring on 3 devices, against one device's whole
  step."""
  assert set(quick["step_split"]) == {"data2xgraph2/sgd", "graph3/sgd+ring"}
  for r in quick["step_split"].values():
    assert set(TERMS) <= set(r["terms"])
  _check_steps(quick["step_split"])


@pytest.mark.slow
def test_graph_modes_ring_exchange_other_meshes(full):
  """The ring on 2 devices, a 2 x 2 data x graph mesh in the balanced order with chunked InfoNCE,
  and LightGCN on 4 devices."""
  assert set(full["step_ring_more"]) == {"graph2/sgd", "data2xgraph2/sgd", "graph4/sgd"}
  _check_steps(full["step_ring_more"])


def test_graph_mode_devices_hold_only_their_edges_and_rows(quick):
  s = quick["sharding"]
  assert s["graphs_on_host"]  # setup put no whole graph on a device
  assert s["n_padded"] % 4 == 0 and s["n_padded"] >= s["n_nodes"]
  for name, op in s["ops"].items():
    assert op["devices"] == 4, name
    assert op["receivers_in_block"] and op["same_edges_in_order"], name
    assert sum(op["real_per_shard"]) == op["n_edges"], name
    assert len(set(op["shard_lengths"])) == 1, name  # padded to one length
    assert op["shard_lengths"][0] == max(op["real_per_shard"]) < op["n_edges"], name
  # the views' products (bcsr, no dropout) read no receivers or pairs: they are not placed; the
  # CIKG's are, for the reconstruction's edge dropout (gp.edge_arrays_needed)
  lean = sorted(name for name, op in s["ops"].items() if op["placed_without_receivers"])
  assert lean == ["cf", "interest", "kg"]
  rows = s["n_padded"] // 4
  assert s["table_global"][0] == s["n_padded"] and s["table_devices"] == 4
  assert s["table_shards"] == [[rows, s["table_global"][1]]] * 4
  assert s["adam_shards"] == [[rows, s["table_global"][1]]] * 8  # mu and nu
  assert all(shape == [32, 32] for shape in s["replicated_shards"])  # e2d: whole on each
  # 3 devices: 592 rows padded with zeros to 3 x 198; host_view gives back the unpadded state
  assert s["n_nodes"] == 592 and s["table3_shards"] == [[198, 32]] * 3
  assert s["table3_padding_zero"] and s["table3_round_trip"]


# ---- slow: every mesh and backend, LightGCN, Adam, 2 epochs of training --------------------------
@pytest.mark.slow
def test_graph_modes_segment_backend_every_mesh(full):
  assert len(full["step_segment"]) == 7  # graph 1, 2, 3, 4; data x graph 2x2, 1x4, 4x1
  _check_steps(full["step_segment"])


@pytest.mark.slow
def test_graph_modes_bcsr_backend_other_meshes(full):
  _check_steps(full["step_bcsr"])


@pytest.mark.slow
def test_graph_modes_adam_step(full):
  _check_steps(full["step_adam"], grad_rtol=1e-2)


@pytest.mark.slow
def test_graph_modes_kge_step_other_meshes(full):
  _check_kge(full["kge"])


@pytest.mark.slow
def test_graph_modes_lightgcn_step(full):
  _check_steps(full["step_lightgcn"])
  for r in full["step_lightgcn"].values():
    assert set(r["terms"]) == {"loss", "bpr", "reg"}


@pytest.mark.slow
def test_graph_modes_two_epochs_match_single_device(full):
  runs = full["train"]
  one = runs.pop("single")
  assert one["parallel"] == {"mode": "data", "mesh": None}
  assert len(runs) == 12
  for name, r in runs.items():
    assert r["stored_order"] == ("rcm" in name or "balanced" in name), name
    assert r["compilations"] == 1, name
    assert [ln["epoch"] for ln in r["lines"]] == [0, 1], name
    for a, b in zip(one["lines"], r["lines"]):
      for key, value in a.items():
        if key not in ("seconds", "train_seconds"):
          assert b[key] == pytest.approx(value, rel=1e-4, abs=1e-7), (name, a["epoch"], key)
    for key, value in one["test"].items():
      assert r["test"][key] == pytest.approx(value, abs=2e-3), (name, key)
  assert runs["data2xgraph2"]["parallel"] == {
    "mode": "data_graph",
    "mesh": {"data": 2, "graph": 2},
    "node_order": "identity",
  }
  assert runs["graph3_rcm"]["parallel"]["node_order"] == "rcm"


# ---- in this process: config, resume, random draws, unsupported models --------------------------
def test_parallel_settings_defaults_and_the_old_key():
  c = base.get_config()
  assert steps.parallel_settings(c) == ("data", 1, 0, "all_gather", "identity")
  old = base.get_config()
  del old.parallel
  assert steps.parallel_settings(old) == ("data", 1, 0, "all_gather", "identity")
  old.train.num_devices = 4  # a config from before config.parallel
  assert steps.parallel_settings(old) == ("data", 4, 0, "all_gather", "identity")
  c.train.num_devices = 4  # an old config file on today's base: the old key still counts
  assert steps.parallel_settings(c) == ("data", 4, 0, "all_gather", "identity")
  c.parallel.num_devices = 2
  with pytest.raises(ValueError, match="old name of parallel.num_devices"):
    steps.parallel_settings(c)
  c = base.get_config()
  c.parallel.exchange = "halo"
  assert steps.parallel_settings(c).exchange == "halo"
  c.parallel.mode = "model"
  with pytest.raises(ValueError, match="unknown parallel.mode"):
    steps.parallel_settings(c)


def _stored_run(tmp_path, config_dict):
  workdir = str(tmp_path / "run")
  os.makedirs(workdir)
  rundir.write_json(os.path.join(workdir, rundir.IDENTITY_FILE), {"config": config_dict})
  return workdir


def test_resume_of_a_run_from_before_config_parallel(tmp_path):
  """An identity written before config.parallel (train.num_devices, no parallel block) resumes
  under today's config with the same devices; another device count or mode is refused."""
  old = rundir.plain(base.get_config())
  del old["parallel"]
  old["train"]["num_devices"] = 1
  workdir = _stored_run(tmp_path, old)
  assert rundir.check_resume(workdir, base.get_config())
  old["train"]["num_devices"] = 4
  workdir4 = _stored_run(tmp_path / "four", old)
  four = base.get_config()
  four.parallel.num_devices = 4
  assert rundir.check_resume(workdir4, four)
  with pytest.raises(rundir.RunError, match=r"parallel.num_devices 4 -> 1"):
    rundir.check_resume(workdir4, base.get_config())
  four.parallel.mode = "graph"
  with pytest.raises(rundir.RunError, match=r'parallel.mode "data" -> "graph"'):
    rundir.check_resume(workdir4, four)


def test_indexed_draws_equal_jax_random():
  key = jax.random.PRNGKey(5)
  u = np.asarray(jax.random.uniform(key, (37, 5)))
  rows, cols = np.arange(37)[:, None], np.arange(5)[None, :]
  hi, lo = gp.index_2x32(jax.numpy.asarray(rows), 5, jax.numpy.asarray(cols))
  np.testing.assert_array_equal(np.asarray(prop.uniform_at(prop.key_words(key), hi, lo)), u)
  b = np.asarray(jax.random.bernoulli(key, 0.8, (101,)))
  idx = jax.numpy.arange(101)
  draws = prop.uniform_at(prop.key_words(key), 0 * idx, idx)
  np.testing.assert_array_equal(np.asarray(draws < 0.8), b)
  # the 64-bit element index of (row, col) in an (N, width) table, past 2^32
  rows = np.array([0, 1, 2**16 - 1, 2**16, 2**26 + 3, 2**32 - 1], np.uint64)
  for width in (1, 64, 1000):
    col = np.uint64(width - 1)
    hi, lo = gp.index_2x32(jax.numpy.asarray(rows, np.uint32), width, jax.numpy.uint32(col))
    got = (np.asarray(hi).astype(np.uint64) << np.uint64(32)) | np.asarray(lo).astype(np.uint64)
    np.testing.assert_array_equal(got, rows * np.uint64(width) + col)


def test_graph_mode_refuses_the_baselines(tmp_path):
  c = simgcl.get_config("synthetic")
  c.synthetic_dir = str(tmp_path / "data")
  c.parallel.mode = "graph"
  ds, c, net, graphs = steps.setup(c)
  tx, kge_tx = steps.make_optimizers(c)
  with pytest.raises(ValueError, match="support .*not SimGCL.*parallel.mode=data"):
    settings = steps.step_settings(c, ds)
    train.make_trainer(net, graphs, settings, tx, kge_tx, train.make_samplers(c, ds, False))


def test_node_order_is_chosen_once_and_stored_with_the_run(tmp_path):
  """A graph-mode run in an RCM order stores the order (node_order.npz) and its blocks' edges,
  halo and padding (partition.json); a resumed run reads the stored order, not a new choice; a
  file of another graph or another order's name is refused in one line naming it."""
  from cikg_jax.graphs import partition

  c = tiny.get_config()
  c.synthetic_dir = str(tmp_path / "data")
  c.train.max_epochs, c.train.plot = 1, False
  c.parallel.mode, c.parallel.node_order = "graph", "rcm"
  workdir = str(tmp_path / "run")
  res = train.train_and_evaluate(c, workdir)
  assert res["parallel"] == {"mode": "graph", "mesh": {"graph": 1}, "node_order": "rcm"}
  _, c, _, graphs = steps.setup(c)
  path = os.path.join(workdir, gp.NodeOrder.FILE)
  stored = gp.NodeOrder.load(path, graphs.n_nodes)
  g = graphs.ops["cikg"].graph
  want = partition.node_order(g.senders, g.receivers, graphs.n_nodes, "rcm")
  assert stored.method == "rcm" and not stored.is_identity
  np.testing.assert_array_equal(stored.order, want)
  with open(os.path.join(workdir, "partition.json")) as f:
    report = json.load(f)
  assert report["node_order"] == "rcm" and report["operator"] == "cikg"
  assert sum(report["blocks"]["edges"]) == len(g.senders)
  assert report["blocks"]["nodes"] == [graphs.n_nodes] and report["blocks"]["halo"] == [0]
  # the report's rows per peer are what the halo exchange pads to, in any order
  for method in partition.ORDERS:
    three = gp.NodeOrder.choose(graphs, method, 3)
    cut = gp.shard_operator(graphs.ops["cikg"], 3, "halo", three.position)
    stats = partition.block_stats(
      g.senders, g.receivers, three.order, partition.equal_row_bounds(graphs.n_nodes, 3)
    )
    assert cut.halo == stats["halo_per_peer_max"] > 0, method

  other = gp.NodeOrder("rcm", 1, want[::-1].copy())  # what an older library might have chosen
  other.save(path)
  again = gp.NodeOrder.for_run(workdir, graphs, "rcm", 1, write=True)
  np.testing.assert_array_equal(again.order, want[::-1])
  with pytest.raises(ValueError, match=r"node_order.npz: the run was placed in node order 'rcm'"):
    gp.NodeOrder.for_run(workdir, graphs, "balanced", 1, write=True)
  gp.NodeOrder("rcm", 1, np.arange(graphs.n_nodes - 1)).save(path)
  with pytest.raises(ValueError, match=r"node_order.npz: .*not a permutation of this graph's"):
    gp.NodeOrder.for_run(workdir, graphs, "rcm", 1, write=True)
  with open(path, "wb") as f:
    f.write(b"not numpy")
  with pytest.raises(ValueError, match=r"node_order.npz: not a node order file"):
    gp.NodeOrder.for_run(workdir, graphs, "rcm", 1, write=True)


def test_graph_mode_keeps_whole_graphs_off_the_devices(tmp_path):
  c = tiny.get_config()
  c.synthetic_dir = str(tmp_path / "data")
  c.parallel.mode = "graph"
  _, _, _, graphs = steps.setup(c)
  leaves = jax.tree_util.tree_leaves(graphs)
  assert leaves and all(isinstance(x, np.ndarray) for x in leaves)


@pytest.mark.slow
def test_graph_modes_halo_exchange_segment_backend(full):
  _check_steps(full["step_halo_segment"])

"""The speed changes keep the numerics: the unrolled threefry draws against jax.random (bit for
bit, alone and in a whole train step), XLA's memory-optimised scheduler against the default (bit
for bit), the fused InfoNCE pass (the CPU default) against autodiff of its formula and float64, the stacked view operator
against three separate propagations (values, gradients, a short training run), the allocator
setting, and TransR's relation-sorted tiles against one relation matrix per row (a train step)."""

import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cikg_jax import runtime
from cikg_jax.data import sampling
from cikg_jax.graphs import cikg as graph_lib
from cikg_jax.graphs import propagation as prop
from cikg_jax.models import cikgrec, losses
from cikg_jax.training import steps, train
from configs import tiny


def _unstacked(graphs: cikgrec.Graphs) -> cikgrec.Graphs:
  return graphs.replace(ops={k: v for k, v in graphs.ops.items() if k != "views"})


def _tiny(tmp_path, views="paper"):
  c = tiny.get_config()
  c.synthetic_dir = str(tmp_path / "data")
  c.train.plot = False
  c.views = views
  return c


def _first_batch(config):
  """(net, graphs, state, batch, tx) of a config: its first mini-batch and initial parameters."""
  ds, config, net, graphs = steps.setup(config)
  tx, kge_tx = steps.make_optimizers(config)
  state = steps.create_train_state(jax.random.PRNGKey(0), net, tx, kge_tx, config.kge.use)
  sampler = sampling.NegativeSampler(ds.train, ds.n_users, ds.n_items)
  batches = sampling.bpr_epoch(ds.train, sampler, config.train.batch_size, np.random.default_rng(0))
  return net, graphs, state, {k: v[0] for k, v in batches.items()}, tx


def _assert_trees_equal(a, b):
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# ---- random draws: the unrolled threefry hash --------------------------------------------------
@pytest.mark.parametrize("shape", [(16392, 64), (1000, 3), (7,), (95859,), (3, 5, 7), (1,)])
def test_uniform_equals_jax_random_bit_for_bit(shape):
  for seed in (0, 1, 2**31 + 5):
    key = jax.random.fold_in(jax.random.PRNGKey(seed), 3)
    want = jax.jit(lambda k: jax.random.uniform(k, shape))(key)
    got = jax.jit(lambda k: prop.uniform(k, shape))(key)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  typed = jax.random.key(4)  # a typed key array takes the same path
  np.testing.assert_array_equal(
    np.asarray(prop.uniform(typed, shape)), np.asarray(jax.random.uniform(typed, shape))
  )


def test_edge_mask_bernoulli_and_noise_equal_the_jax_random_draws():
  rng = np.random.default_rng(0)
  op = prop.make_operator(graph_lib.make_graph(50, rng.integers(0, 50, (300, 2)), np.arange(5)))
  key = jax.random.PRNGKey(11)
  keep = jax.random.bernoulli(key, 0.8, (op.n_pairs,))
  pair = op.graph.edges["pair"]
  want = jnp.where(pair < 0, True, keep[jnp.maximum(pair, 0)]).astype(jnp.float32)
  np.testing.assert_array_equal(np.asarray(prop.edge_keep_mask(op, key, 0.2)), np.asarray(want))
  e = jnp.asarray(rng.standard_normal((50, 8)), jnp.float32)
  np.testing.assert_array_equal(
    np.asarray(cikgrec.DENSE.bernoulli(key, 1 - 0.1, e)),
    np.asarray(jax.random.bernoulli(key, 1 - 0.1, e.shape)),
  )
  u = jax.random.uniform(jax.random.fold_in(key, 2), e.shape)
  want = e + jnp.sign(e) * losses.l2_normalize(u) * 0.1
  np.testing.assert_array_equal(np.asarray(cikgrec.simgcl_noise(key, 0.1)(2, e)), np.asarray(want))


def test_train_step_equals_the_one_with_jax_random_draws(tmp_path, monkeypatch):
  """The whole step (edge and message dropout, masking, SimGCL noise) with the unrolled draws
  and with jax.random's: the same terms and new state, bit for bit."""
  c = _tiny(tmp_path)
  c.model.edge_dropout, c.model.message_dropout = 0.1, 0.1
  net, graphs, state, batch, tx = _first_batch(c)
  rates, key = np.full(1, 0.3, np.float32), jax.random.PRNGKey(5)
  new = jax.jit(steps.make_train_step(net, tx, steps.epoch_schedule(rates, 1)))(
    state, batch, key, graphs
  )
  monkeypatch.setattr(prop, "uniform", jax.random.uniform)  # read when the step is traced
  old = jax.jit(steps.make_train_step(net, tx, steps.epoch_schedule(rates, 1)))(
    state, batch, key, graphs
  )
  _assert_trees_equal(new, old)


# ---- XLA:CPU's memory-optimised scheduler ------------------------------------------------------
def test_memory_optimized_scheduler_computes_the_same_bits(tmp_path):
  if jax.default_backend() != "cpu":
    pytest.skip("an XLA:CPU option")
  net, graphs, state, batch, tx = _first_batch(_tiny(tmp_path))
  args = (state, batch, jax.random.PRNGKey(5), graphs)
  lowered = jax.jit(
    steps.make_train_step(net, tx, steps.epoch_schedule(np.full(1, 0.3, np.float32), 1))
  ).lower(*args)
  outs = [
    lowered.compile({"xla_cpu_scheduler_type": f"CPU_SCHEDULER_TYPE_{kind}"})(*args)
    for kind in ("DEFAULT", "MEMORY_OPTIMIZED")
  ]
  _assert_trees_equal(*outs)


def test_set_xla_cpu_flags_keeps_the_users_choice(monkeypatch):
  monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_DEFAULT --x=1")
  assert runtime.set_xla_cpu_flags() == "--xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_DEFAULT --x=1"
  monkeypatch.delenv("XLA_FLAGS")
  flags = runtime.set_xla_cpu_flags()
  assert flags == "--xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED"
  assert runtime.set_xla_cpu_flags() == flags  # idempotent


# ---- the fused InfoNCE pass (the CPU default) --------------------------------------------------
def test_fused_info_nce_is_chosen_per_backend(monkeypatch):
  """None (the default) picks the fused pass on CPU and autodiff elsewhere; True/False force."""
  assert losses.FUSED_INFO_NCE is None
  for backend, fused in (("cpu", True), ("gpu", False), ("tpu", False)):
    monkeypatch.setattr(jax, "default_backend", lambda b=backend: b)
    assert losses.fused_info_nce() is fused, backend
  for forced in (True, False):
    monkeypatch.setattr(losses, "FUSED_INFO_NCE", forced)
    assert losses.fused_info_nce() is forced


def test_train_step_takes_the_fused_pass_on_cpu(tmp_path, monkeypatch):
  if jax.default_backend() != "cpu":
    pytest.skip("the CPU dispatch")
  net, graphs, state, batch, tx = _first_batch(_tiny(tmp_path))
  args = (state, batch, jax.random.PRNGKey(5), graphs)
  jaxpr = {}
  for fused in (None, True, False):
    monkeypatch.setattr(losses, "FUSED_INFO_NCE", fused)  # read when traced
    step = steps.make_train_step(net, tx, steps.epoch_schedule(np.full(1, 0.3, np.float32), 1))
    jaxpr[fused] = str(jax.make_jaxpr(step)(*args))
  assert jaxpr[None] == jaxpr[True]
  # the fused pass's scan over anchor blocks, once for the user and once for the item term
  assert jaxpr[None].count("scan[") == jaxpr[False].count("scan[") + 2


def _float64_info_nce(anchors, candidates, positive_index, mask, tau):
  """The InfoNCE loss and its gradients in float64 from the same float32 inputs (numpy)."""
  a, c = np.asarray(anchors, np.float64), np.asarray(candidates, np.float64)
  idx, mask = np.asarray(positive_index), np.asarray(mask, np.float64)
  w = mask / max(mask.sum(), 1.0) / tau
  logits = a @ c.T / tau
  top = logits.max(axis=1, keepdims=True)
  e = np.exp(logits - top)
  total = e.sum(axis=1, keepdims=True)
  p = e / total
  loss = np.sum(w * tau * (np.log(total[:, 0]) + top[:, 0] - np.sum(a * c[idx], axis=1) / tau))
  d_a = w[:, None] * (p @ c - c[idx])
  d_c = p.T @ (w[:, None] * a)
  np.add.at(d_c, idx, -w[:, None] * a)
  return loss, d_a, d_c


EPS32 = float(np.finfo(np.float32).eps)  # 1.19e-7


@pytest.mark.parametrize(
  "case",
  [
    "tiny-paper",
    "tiny-release",
    pytest.param("dbbook2014-paper", marks=pytest.mark.slow),
    pytest.param("dbbook2014-release", marks=pytest.mark.slow),
  ],
)
def test_fused_info_nce_matches_autodiff_to_float32_rounding(case, tmp_path, monkeypatch):
  """Every golden case with contrastive terms, its first mini-batch at the initial parameters:
  (1) each InfoNCE term at the step's view embeddings, fused and autodiff, against the same
  formula in float64: the fused pass is no further from it than autodiff (measured: both 0.7-3.0e-7
  of the largest entry, fused bit for bit equal to autodiff on these shapes); (2) the whole loss
  and its gradient: the same loss terms, every gradient within 8 float32 ulps of its largest entry
  (largest measured: 3.6e-7 = 3.0 ulps, node table of dbbook2014-release; tiny 3.3e-8)."""
  from tests.golden import record

  data_dir = ""
  if case.startswith("dbbook2014"):
    data_dir = os.environ.get("CIKG_DATA_DIR") or os.path.join("..", "shared", "data")
    if not os.path.isdir(os.path.join(data_dir, "dbbook2014")):
      pytest.skip(f"paper datasets not found in {data_dir} (set CIKG_DATA_DIR)")
  config = record.config_for(case, data_dir, str(tmp_path / "data"))
  net, graphs, state, batch, _ = _first_batch(config)
  key, params = jax.random.PRNGKey(7), state.params
  users, pos, mask = batch["users"], batch["pos"], batch["mask"]
  nu, tau = net.n_users, net.contrastive.tau

  def both(fn, *args, **kwargs):
    """fn's jitted value_and_grad with autodiff's InfoNCE and with the fused pass."""
    out = []
    for fused in (False, True):
      monkeypatch.setattr(losses, "FUSED_INFO_NCE", fused)  # read when traced
      out.append(jax.jit(jax.value_and_grad(fn, **kwargs))(*args))
    return out

  z = net.apply({"params": params}, graphs, key, method="view_embeddings")
  z1, z2, z3 = map(losses.l2_normalize, z)
  for anchors, candidates, idx in ((z1[users], z2[:nu], users), (z1[nu + pos], z3[nu:], pos)):
    f = lambda a, c, idx=idx: losses.info_nce(a, c, idx, mask, tau)
    (loss_a, grads_a), (loss_f, grads_f) = both(f, anchors, candidates, argnums=(0, 1))
    want = _float64_info_nce(anchors, candidates, idx, mask, tau)
    assert float(loss_f) == float(loss_a)  # the formula's value
    assert abs(float(loss_f) - want[0]) <= 4 * EPS32 * abs(want[0])
    for g_a, g_f, g64 in zip(grads_a, grads_f, want[1:]):
      scale = np.abs(g64).max()
      err_a = np.abs(np.asarray(g_a, np.float64) - g64).max() / scale
      err_f = np.abs(np.asarray(g_f, np.float64) - g64).max() / scale
      assert err_a < 8 * EPS32 and err_f <= max(err_a, 4 * EPS32), (err_a, err_f)

  def step_loss(p, g):
    return net.apply({"params": p}, g, batch, key, np.float32(0.3), method="loss")

  ((loss_a, m_a), g_a), ((loss_f, m_f), g_f) = both(step_loss, params, graphs, has_aux=True)
  for k in ("cl_user", "cl_item", "bpr", "uir", "loss"):
    assert float(m_f[k]) == pytest.approx(float(m_a[k]), rel=2 * EPS32, abs=0), k
  for x, y in zip(jax.tree_util.tree_leaves(g_a), jax.tree_util.tree_leaves(g_f)):
    x, y = np.asarray(x), np.asarray(y)
    assert np.abs(x - y).max() <= 8 * EPS32 * np.abs(x).max()


def _unit(rng, shape):
  x = rng.standard_normal(shape)
  return jnp.asarray(x / np.linalg.norm(x, axis=1, keepdims=True), jnp.float32)


@pytest.mark.parametrize("block", [1024, 128, 48])  # one block; several; a padded last block
@pytest.mark.parametrize("count", [None, 700.0])
def test_fused_info_nce_matches_autodiff(monkeypatch, block, count):
  rng = np.random.default_rng(1)
  a, c = _unit(rng, (300, 16)), _unit(rng, (500, 16))
  idx = jnp.asarray(rng.integers(0, 500, 300))
  mask = jnp.asarray((rng.random(300) < 0.8).astype(np.float32))
  n = None if count is None else jnp.float32(count)
  loss = lambda a, c: 0.01 * losses.info_nce(a, c, idx, mask, 0.15, n)
  monkeypatch.setattr(losses, "FUSED_INFO_NCE", False)
  exact = jax.jit(jax.value_and_grad(loss, (0, 1)))(a, c)
  monkeypatch.setattr(losses, "FUSED_INFO_NCE", True)  # read when traced
  monkeypatch.setattr(losses, "INFO_NCE_BLOCK", block)
  fused = jax.jit(jax.value_and_grad(loss, (0, 1)))(a, c)
  assert float(fused[0]) == float(exact[0])  # the formula's value
  assert float(jax.jit(loss)(a, c)) == float(exact[0])  # undifferentiated: the formula itself
  for x, y in zip(fused[1], exact[1]):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-6)


def test_fused_info_nce_with_a_traced_temperature_falls_back(monkeypatch):
  monkeypatch.setattr(losses, "FUSED_INFO_NCE", True)
  rng = np.random.default_rng(2)
  a, c = _unit(rng, (20, 4)), _unit(rng, (30, 4))
  g = jax.grad(lambda t: losses.info_nce(a, c, jnp.arange(20), jnp.ones(20), t))(jnp.float32(0.2))
  assert np.isfinite(float(g))


# ---- the stacked view operator (opt-in) --------------------------------------------------------
def test_stacked_product_equals_separate_products_exactly():
  rng = np.random.default_rng(0)
  n = 40
  gs = [
    graph_lib.make_graph(n, rng.integers(0, n, (m, 2)), loops)
    for m, loops in ((60, None), (90, np.arange(10)), (30, None))
  ]
  stacked = prop.make_operator(prop.stack_graphs(gs))
  x = jnp.asarray(rng.standard_normal((n, 8)), jnp.float32)
  for backend in prop.BACKENDS:
    out = prop.propagate(stacked, jnp.concatenate([x] * 3), 3, None, backend)
    for k, g in enumerate(gs):
      want = prop.propagate(prop.make_operator(g), x, 3, None, backend)
      np.testing.assert_array_equal(np.asarray(out[k * n : (k + 1) * n]), np.asarray(want))


@pytest.mark.parametrize("views", ["paper", "release"])
def test_loss_and_gradients_match_separate_views(tmp_path, views):
  ds, config, net, graphs = steps.setup(_tiny(tmp_path, views))
  assert "views" not in graphs.ops  # opt-in
  graphs = cikgrec.with_stacked_views(graphs)
  tx, kge_tx = steps.make_optimizers(config)
  state = steps.create_train_state(jax.random.PRNGKey(0), net, tx, kge_tx, config.kge.use)
  batches = sampling.bpr_epoch(
    ds.train,
    sampling.NegativeSampler(ds.train, ds.n_users, ds.n_items),
    config.train.batch_size,
    np.random.default_rng(0),
  )
  batch = {k: v[0] for k, v in batches.items()}
  key = jax.random.PRNGKey(7)
  f = jax.jit(
    jax.value_and_grad(
      lambda p, g: net.apply({"params": p}, g, batch, key, np.float32(0.3), method="loss"),
      has_aux=True,
    )
  )
  (loss, m), grads = f(state.params, graphs)
  (loss0, m0), grads0 = f(state.params, _unstacked(graphs))
  views = lambda g: net.apply({"params": state.params}, g, key, method="view_embeddings")
  z, z0 = views(graphs), views(_unstacked(graphs))
  for a, b in zip(z, z0):  # same noise draws, same sums: equal values
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  for k in ("cl_user", "cl_item", "bpr", "uir", "loss"):
    np.testing.assert_allclose(float(m[k]), float(m0[k]), rtol=1e-6)
  for a, b in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(grads0)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-8)


def test_short_training_matches_separate_views(tmp_path, monkeypatch):
  c = _tiny(tmp_path)
  c.train.max_epochs = 2
  c.train.checkpoint = False
  train.train_and_evaluate(c, str(tmp_path / "separate"))
  make, stacked = steps.make_graphs, []

  def make_stacked(*a):
    stacked.append(cikgrec.with_stacked_views(make(*a)))
    return stacked[-1]

  monkeypatch.setattr(steps, "make_graphs", make_stacked)
  train.train_and_evaluate(c, str(tmp_path / "stacked"))
  assert len(stacked) == 1 and "views" in stacked[0].ops  # the run did use the stacked operator
  res = [
    json.load(open(os.path.join(tmp_path, w, "results.json"))) for w in ("stacked", "separate")
  ]
  for k, v in res[1]["test"].items():
    assert res[0]["test"][k] == pytest.approx(v, rel=1e-5, abs=1e-7), k
  lines = [
    [json.loads(x) for x in open(os.path.join(tmp_path, w, "metrics.jsonl"))]
    for w in ("stacked", "separate")
  ]
  assert len(lines[0]) == len(lines[1])
  for a, b in zip(*lines):
    assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)


def _info_nce_before(anchors, candidates, positive_index, mask, tau, count=None):
  """losses.info_nce before the speed work (the positive gathered from the product)."""
  logits = anchors @ candidates.T / tau
  pos = jnp.take_along_axis(logits, positive_index[:, None], axis=1)[:, 0]
  lse = jnp.log(jnp.sum(jnp.exp(logits - 1.0 / tau), axis=1)) + 1.0 / tau
  return losses._masked_mean(lse - pos, mask, count)


def test_info_nce_matches_the_previous_formula():
  rng = np.random.default_rng(1)
  unit = lambda x: jnp.asarray(x / np.linalg.norm(x, axis=1, keepdims=True), jnp.float32)
  a, c = unit(rng.standard_normal((64, 16))), unit(rng.standard_normal((300, 16)))
  idx = jnp.asarray(rng.integers(0, 300, 64))
  mask = jnp.asarray((rng.random(64) < 0.8).astype(np.float32))
  for f_count in (None, jnp.float32(70.0)):
    new = jax.value_and_grad(
      lambda a, c: losses.info_nce(a, c, idx, mask, 0.15, f_count), argnums=(0, 1)
    )(a, c)
    old = jax.value_and_grad(
      lambda a, c: _info_nce_before(a, c, idx, mask, 0.15, f_count), argnums=(0, 1)
    )(a, c)
    np.testing.assert_allclose(float(new[0]), float(old[0]), rtol=1e-6)
    for x, y in zip(new[1], old[1]):
      np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-6)


def test_short_training_matches_previous_info_nce(tmp_path, monkeypatch):
  c = _tiny(tmp_path)
  c.train.max_epochs = 2
  c.train.checkpoint = False
  train.train_and_evaluate(c, str(tmp_path / "now"))
  monkeypatch.setattr(losses, "info_nce", _info_nce_before)
  train.train_and_evaluate(c, str(tmp_path / "before"))
  res = [json.load(open(os.path.join(tmp_path, w, "results.json"))) for w in ("now", "before")]
  for k, v in res[1]["test"].items():
    assert res[0]["test"][k] == pytest.approx(v, rel=1e-5, abs=1e-7), k
  lines = [
    [json.loads(x) for x in open(os.path.join(tmp_path, w, "metrics.jsonl"))]
    for w in ("now", "before")
  ]
  assert len(lines[0]) == len(lines[1])
  for a, b in zip(*lines):
    for k in ("loss", "cl_user", "cl_item"):
      assert a[k] == pytest.approx(b[k], rel=1e-5), k


def test_keep_freed_memory_is_idempotent():
  import platform

  runtime.restore_malloc_defaults()
  first = runtime.keep_freed_memory()
  if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
    assert first is True  # mallopt is there and accepted the settings
  assert runtime.keep_freed_memory() is first  # a second call changes nothing and says the same


_CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
cpu family\t: 6
model\t\t: 143
model name\t: Intel(R) Xeon(R) Platinum 8480+
stepping\t: 8
flags\t\t: fpu sse4_2 avx avx2 fma avx512f avx512bw avx512vl avx512_bf16 amx_tile

processor\t: 1
model name\t: something else
"""


def test_machine_names_the_cpu_its_vector_units_and_the_versions(tmp_path):
  path = tmp_path / "cpuinfo"
  path.write_text(_CPUINFO)
  m = runtime.machine(str(path))
  assert m["cpu_model"] == "Intel(R) Xeon(R) Platinum 8480+"
  assert m["cpu_id"] == "GenuineIntel 6 143 8"
  assert m["vector_extensions"] == [
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_bf16",
    "amx_tile",
  ]
  assert m["cpu_class"] == "Intel(R) Xeon(R) Platinum 8480+, AVX-512"
  assert m["jax"] == jax.__version__ and m["logical_cpus"] == os.cpu_count()
  assert 1 <= m["cpus_usable"] <= m["logical_cpus"]
  if os.path.exists("/proc/loadavg"):
    assert len(m["loadavg"]) == 3 and all(x >= 0 for x in m["loadavg"])
  assert runtime.cpu_class("AMD EPYC", ["avx", "avx2", "fma"]) == "AMD EPYC, AVX2"
  assert runtime.machine(str(tmp_path / "missing"))["vector_extensions"] == []
  json.dumps(m)  # goes into result files as it is


_FAKE_RELEASE = """import json, sys
print("ready " + json.dumps({"torch": "0.0-fake", "threads": 2, "machine": {}}), flush=True)
for _ in sys.stdin:
  print(0.5, flush=True)
"""


@pytest.mark.slow
def test_bench_results_name_the_machine_and_the_info_nce_path(tmp_path):
  """bench.py's benchmark record (step, TransE step, evaluation; ~40 s)."""
  from experiments import bench

  out = bench.bench(_tiny(tmp_path), repeats=1, profile=False)
  assert out["info_nce"] == ("fused" if jax.default_backend() == "cpu" else "autodiff")
  for k in ("cpu_model", "cpu_class", "vector_extensions", "logical_cpus", "loadavg", "jax"):
    assert k in out["machine"], k
  json.dumps(out)


def test_side_by_side_results_name_the_machine_and_the_release_torch(tmp_path):
  """bench.py --release against a stand-in for the release's process that speaks the same pipe
  protocol: the record names the machine, the load and both sides' versions."""
  from experiments import bench

  fake = tmp_path / "fake_release.py"
  fake.write_text(_FAKE_RELEASE)
  paired = bench.paired_with_release(_tiny(tmp_path), str(tmp_path), f"{sys.executable} {fake}", 3)
  assert paired["release_torch"] == "0.0-fake" and paired["release_step_seconds"] == [0.5] * 3
  assert paired["machine"]["cpu_class"] == runtime.machine()["cpu_class"]
  assert len(paired["loadavg_before"]) == 3
  assert paired["info_nce"] == ("fused" if jax.default_backend() == "cpu" else "autodiff")
  assert paired["ratio_median_of_pairs"] > 0
  json.dumps(paired)


def test_transr_step_with_tiles_equals_per_row_matrices(tmp_path):
  """KGAT's TransR step (its sampler's first batch, Adam update included) with
  losses.grouped_matmul and with one W_r gathered per row (bench.py's baseline variant): the same
  loss and parameters to float rounding."""
  from configs import kgat
  from experiments import bench

  c = kgat.get_config("synthetic")
  c.synthetic_dir = str(tmp_path / "data")
  ds, c, net, _ = steps.setup(c)
  tx, kge_tx = steps.make_optimizers(c)
  state = steps.create_train_state(jax.random.PRNGKey(0), net, tx, kge_tx, True)
  kb = {k: v[0] for k, v in train.make_samplers(c, ds, True)["kge_sampler"].epoch(0, 0).items()}
  assert len(np.unique(kb["relation"])) > 2  # several relations share the batch
  tiles, loss_tiles = bench._compiled_kge_step(net, kge_tx, state, kb)(state, kb)
  rows, loss_rows = bench._compiled_kge_step(net, kge_tx, state, kb, per_row=True)(state, kb)
  np.testing.assert_allclose(float(loss_tiles["kge"]), float(loss_rows["kge"]), rtol=1e-6)
  # Adam's first step divides by |g|: a near-zero gradient's rounding moves its row by up to
  # ~lr, here by 1e-6 at most (its lr 5e-3 moves every trained entry by ~5e-3)
  for a, b in zip(jax.tree_util.tree_leaves(tiles.params), jax.tree_util.tree_leaves(rows.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=2e-6)
  changed = np.asarray(tiles.params["w_r"]) != np.asarray(state.params["w_r"])
  assert changed.any()  # the step trains W_r

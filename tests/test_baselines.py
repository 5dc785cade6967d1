"""SimGCL and KGAT against independent dense numpy computations on a hand-sized graph, and short
runs of each through the training driver."""

import copy
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cikg_jax.data import dataset as dataset_lib
from cikg_jax.models import baselines
from cikg_jax.training import steps, train
from configs import kgat as kgat_config
from configs import lightgcn as lightgcn_config
from configs import simgcl as simgcl_config
from tests.test_data import _write
from tests.test_model import assert_init_params_match_flax


@pytest.fixture()
def toy(tmp_path):
  """4 users, 4 items, 7 entities, 2 KG relations (one entity pair linked by both), 2 interests."""
  root = tmp_path / "toy"
  _write(root, "train.txt", "0 0 1\n1 1 2\n2 2 3 0\n3 3 1\n")
  _write(root, "test.txt", "0 2\n1 0\n2 1\n3 0\n")
  _write(root, "kg_final.txt", "0 0 4\n1 0 4\n2 1 5\n3 1 5\n4 1 6\n4 0 6\n")
  _write(root, "user_interest_clustered.txt", "0 7\n2 8\n")  # rows both baselines ignore
  return dataset_lib.load_dataset(str(tmp_path), "toy", selection="test")


def _norm(x):
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _log_sigmoid(x):
  return -np.log1p(np.exp(-x))


# ---- SimGCL --------------------------------------------------------------------------------
def _user_item_operator(ds):
  """D^-1/2 A D^-1/2 of the bipartite user-item graph, users then items, no self loops."""
  n = ds.n_users + ds.n_items
  a = np.zeros((n, n))
  for u, i in ds.train:
    a[u, ds.n_users + i] = a[ds.n_users + i, u] = 1.0
  d = a.sum(1)
  inv = np.where(d > 0, d**-0.5, 0.0)
  return inv[:, None] * a * inv[None, :]


def _simgcl_config():
  c = simgcl_config.get_config("synthetic")
  c.model.embed_dim, c.model.num_layers = 6, 2
  c.train.l2 = 1e-2
  c.simgcl.weight, c.simgcl.eps, c.simgcl.tau = 0.5, 0.1, 0.2
  return c


def test_simgcl_loss_against_numpy(toy):
  ds, c = toy, _simgcl_config()
  g = baselines.simgcl_make_graphs(None, ds, c)
  net = steps.create_model(c, ds)
  assert type(net) is baselines.SimGCL
  params = net.init_params(jax.random.PRNGKey(0))
  # duplicate users and items, and two padding rows (which must not enter the unique sets)
  batch = {
    "users": np.array([0, 2, 2, 3, 1, 0, 0], np.int32),
    "pos": np.array([1, 3, 0, 1, 2, 3, 3], np.int32),
    "neg": np.array([2, 1, 1, 0, 3, 0, 0], np.int32),
    "mask": np.array([1, 1, 1, 1, 1, 0, 0], np.float32),
  }
  key = jax.random.PRNGKey(5)
  loss, m = net.apply({"params": params}, g, batch, key, method="loss")

  nu, n = ds.n_users, ds.n_users + ds.n_items
  a_hat = _user_item_operator(ds)
  ego = np.asarray(params["node_embedding"]["embedding"], np.float64)[:n]

  def encoder(noise_key=None):  # mean of layers 1..L, layer 0 excluded
    e, layers = ego, []
    for layer in range(2):
      e = a_hat @ e
      if noise_key is not None:  # the uniform draws, exactly as the model makes them
        u = np.asarray(jax.random.uniform(jax.random.fold_in(noise_key, layer), e.shape))
        e = e + np.sign(e) * _norm(u) * 0.1
      layers.append(e)
    return np.mean(layers, axis=0)

  out = encoder()
  real = batch["mask"] > 0
  us, ps, ns = batch["users"][real], nu + batch["pos"][real], nu + batch["neg"][real]
  diff = (out[us] * out[ps]).sum(1) - (out[us] * out[ns]).sum(1)
  bpr = np.mean(-np.log(1 / (1 + np.exp(-diff)) + 1e-10))
  reg = 1e-2 * 0.5 * np.mean((ego[us] ** 2).sum(1) + (ego[ps] ** 2).sum(1) + (ego[ns] ** 2).sum(1))
  k1, k2 = jax.random.split(key)
  v1, v2 = _norm(encoder(k1)), _norm(encoder(k2))

  def nce(rows):
    s = v1[rows] @ v2[rows].T / 0.2
    return np.mean([np.log(np.exp(s[r]).sum()) - s[r, r] for r in range(len(rows))])

  cl_user = nce(np.unique(us))
  cl_item = nce(np.unique(ps))
  assert sorted(np.unique(us)) == [0, 1, 2, 3] and len(np.unique(ps)) == 4
  assert float(m["bpr"]) == pytest.approx(bpr, rel=1e-5)
  assert float(m["reg"]) == pytest.approx(reg, rel=1e-5)
  assert float(m["cl_user"]) == pytest.approx(cl_user, rel=1e-4)
  assert float(m["cl_item"]) == pytest.approx(cl_item, rel=1e-4)
  assert float(loss) == pytest.approx(bpr + reg + 0.5 * (cl_user + cl_item), rel=1e-4)
  users, items = net.apply({"params": params}, g)
  np.testing.assert_allclose(np.asarray(users), out[:nu], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(items), out[nu:], rtol=1e-5, atol=1e-6)


def test_unique_rows_ignore_padding():
  ids, mask = baselines.unique_rows(jnp.array([3, 1, 3, 0, 2]), jnp.array([1, 1, 1, 0, 0.0]), 5)
  assert np.asarray(ids).tolist()[:2] == [1, 3] and np.asarray(mask).tolist() == [1, 1, 0, 0, 0]


# ---- KGAT ----------------------------------------------------------------------------------
def _kgat_config():
  c = kgat_config.get_config("synthetic")
  c.model.embed_dim = 6
  c.kgat.layers, c.kgat.relation_dim = (5, 3), 4
  c.train.l2, c.kge.l2 = 1e-2, 1e-2
  return c


def _ckg_triples(ds):
  """Typed directed edges: interact = R, KG r, inverse = r + R + 1; node rows (users first)."""
  r_int = ds.n_relations
  edges = set()
  for u, i in ds.train:
    edges.add((u, r_int, ds.n_users + i))
  for h, r, t in ds.kg:
    edges.add((ds.n_users + h, r, ds.n_users + t))
  edges |= {(t, r + r_int + 1, h) for h, r, t in list(edges)}
  return sorted(edges)


def _layers(params):
  return [
    params[f"aggregators_{i}"] for i in range(sum(k.startswith("aggregators_") for k in params))
  ]


def _numpy_attention(params, triples):
  emb = np.asarray(params["node_embedding"]["embedding"], np.float64)
  w = np.asarray(params["w_r"], np.float64)
  rel = np.asarray(params["relation_embedding"]["embedding"], np.float64)
  score = {(h, r, t): (emb[t] @ w[r]) @ np.tanh(emb[h] @ w[r] + rel[r]) for h, r, t in triples}
  att = {}
  for h in {e[0] for e in triples}:
    mine = [e for e in triples if e[0] == h]
    z = np.exp(np.array([score[e] for e in mine]))
    att.update(zip(mine, z / z.sum()))
  return att


def _numpy_kgat(params, triples, n, c):
  att = _numpy_attention(params, triples)
  lap = np.zeros((n, n))
  for (h, _, t), p in att.items():
    lap[h, t] += p
  ego = np.asarray(params["node_embedding"]["embedding"], np.float64)[:n]
  outs = [ego]
  leaky = lambda x: np.where(x > 0, x, c.kgat.negative_slope * x)
  for layer in _layers(params):
    side = lap @ ego
    dense = lambda name, x: x @ np.asarray(layer[name]["kernel"]) + np.asarray(layer[name]["bias"])
    ego = leaky(dense("sum", ego + side)) + leaky(dense("bi", ego * side))
    outs.append(_norm(ego))
  return np.concatenate(outs, axis=1), att


def _nonzero_biases(params):
  key = jax.random.PRNGKey(9)
  for i, layer in enumerate(_layers(params)):
    for name in ("sum", "bi"):
      b = layer[name]["bias"]
      layer[name]["bias"] = 0.1 * jax.random.normal(
        jax.random.fold_in(key, 2 * i + len(name)), b.shape
      )
  return params


def test_kgat_attention_and_propagation_against_numpy(toy):
  ds, c = toy, _kgat_config()
  g = baselines.kgat_make_graphs(None, ds, c)
  n_rel = ds.n_relations + 1
  net = steps.create_model(c, ds)
  assert type(net) is baselines.KGAT
  params = _nonzero_biases(net.init_params(jax.random.PRNGKey(1)))
  triples = _ckg_triples(ds)
  assert params["relation_embedding"]["embedding"].shape == (2 * n_rel, 4)
  assert params["w_r"].shape == (2 * n_rel, 6, 4) and len(_layers(params)) == 2
  variables = {"params": params}
  got = np.asarray(net.apply(variables, g, method="attention"))
  edges = list(
    zip(np.asarray(g.op.graph.receivers), np.asarray(g.relation), np.asarray(g.op.graph.senders))
  )
  assert sorted(tuple(e) for e in np.array(edges).tolist()) == triples
  n = ds.n_users + ds.n_entities
  ref, att = _numpy_kgat(params, triples, n, c)
  np.testing.assert_allclose(got, [att[tuple(e)] for e in np.array(edges).tolist()], rtol=1e-5)
  out = np.asarray(net.apply(variables, g, method="propagate"))
  assert out.shape == (n, 6 + 5 + 3)
  np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-6)
  users, items = net.apply(variables, g)
  np.testing.assert_allclose(np.asarray(users), ref[: ds.n_users], rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(
    np.asarray(items), ref[ds.n_users : ds.n_users + ds.n_items], rtol=1e-4, atol=1e-6
  )


def test_kgat_losses_against_numpy(toy):
  ds, c = toy, _kgat_config()
  c.kgat.mess_dropout = 0.0  # the loss without dropout equals the evaluation propagation
  g = baselines.kgat_make_graphs(None, ds, c)
  n_rel = ds.n_relations + 1
  net = steps.create_model(c, ds)
  params = _nonzero_biases(net.init_params(jax.random.PRNGKey(2)))
  # the CF steps of an epoch after the first use the attention of the parameters at its start
  g = net.apply({"params": params}, g, True, method="epoch_graphs")
  batch = {
    "users": np.array([0, 1, 2, 3, 0], np.int32),
    "pos": np.array([1, 2, 3, 1, 0], np.int32),
    "neg": np.array([2, 3, 1, 0, 0], np.int32),
    "mask": np.array([1, 1, 1, 1, 0], np.float32),
  }
  loss_fn = lambda p: net.apply({"params": p}, g, batch, jax.random.PRNGKey(0), method="loss")
  loss, m = loss_fn(params)
  out, _ = _numpy_kgat(params, _ckg_triples(ds), ds.n_users + ds.n_entities, c)
  u, i, j = (
    out[[0, 1, 2, 3]],
    out[ds.n_users + np.array([1, 2, 3, 1])],
    out[ds.n_users + np.array([2, 3, 1, 0])],
  )
  bpr = np.mean(-np.log(1 / (1 + np.exp(-((u * i).sum(1) - (u * j).sum(1)))) + 1e-10))
  reg = 1e-2 * 0.5 * np.mean((u**2).sum(1) + (i**2).sum(1) + (j**2).sum(1))
  assert float(m["bpr"]) == pytest.approx(bpr, rel=1e-4)
  assert float(m["reg"]) == pytest.approx(reg, rel=1e-4)
  assert float(loss) == pytest.approx(bpr + reg, rel=1e-4)
  # BPR does not train the attention (KGAT's code: A is a constant of the CF step)
  grads = jax.grad(lambda p: loss_fn(p)[0])(params)
  assert not np.any(np.asarray(grads["w_r"]))
  assert not np.any(np.asarray(grads["relation_embedding"]["embedding"]))
  assert np.any(np.asarray(grads["node_embedding"]["embedding"]))
  # TransR on a hand batch: ||h W_r + e_r - t W_r||^2 against a negative tail,
  kb = {
    "head": np.array([4, 0, 6]),
    "relation": np.array([0, 2, 1]),
    "tail": np.array([8, 5, 9]),
    "neg_tail": np.array([10, 7, 4]),
  }
  # (the sampler draws inverse triples (t, r + R + 1, h) as triples of their own)
  del n_rel
  emb = np.asarray(params["node_embedding"]["embedding"], np.float64)
  w_all = np.asarray(params["w_r"], np.float64)
  rel_all = np.asarray(params["relation_embedding"]["embedding"], np.float64)
  hs, rs, ts, ns = kb["head"], kb["relation"], kb["tail"], kb["neg_tail"]
  proj = lambda nodes: np.einsum("bd,bdk->bk", emb[nodes], w_all[rs])
  h, t, tn, r = proj(hs), proj(ts), proj(ns), rel_all[rs]
  pos, neg = ((h + r - t) ** 2).sum(1), ((h + r - tn) ** 2).sum(1)
  l2m = lambda x: np.mean((x**2).sum(1) / 2)
  ref = np.mean(-_log_sigmoid(neg - pos)) + 1e-2 * (l2m(h) + l2m(r) + l2m(t) + l2m(tn))
  got = net.apply(
    {"params": params}, {k: v.astype(np.int32) for k, v in kb.items()}, method="kge_loss"
  )
  assert float(got) == pytest.approx(ref, rel=1e-5)


def test_kgat_initial_attention_is_per_relation_random_walk(toy):
  """KGAT's A_in starts as sum_r D_r^-1 A_r (its loader's si-normalised relational adjacency):
  edge (h, r, t) weighs 1 / (edges of h with relation r); the first epoch trains with it."""
  ds, c = toy, _kgat_config()
  g = baselines.kgat_make_graphs(None, ds, c)
  triples = _ckg_triples(ds)
  deg = {}
  for h, r, _ in triples:
    deg[(h, r)] = deg.get((h, r), 0) + 1
  heads = np.asarray(g.op.graph.receivers)
  tails = np.asarray(g.op.graph.senders)
  rels = np.asarray(g.relation)
  got = {(int(h), int(r), int(t)): float(a) for h, r, t, a in zip(heads, rels, tails, g.attention)}
  assert set(got) == set(triples)
  for (h, r, _t), a in got.items():
    assert a == pytest.approx(1.0 / deg[(h, r)], rel=1e-6)
  net = steps.create_model(c, ds)
  params = net.init_params(jax.random.PRNGKey(0))
  first = net.apply({"params": params}, g, False, method="epoch_graphs")
  np.testing.assert_array_equal(np.asarray(first.attention), np.asarray(g.initial_attention))
  later = net.apply({"params": params}, g, True, method="epoch_graphs")
  ref = _numpy_attention(params, triples)
  np.testing.assert_allclose(
    np.asarray(later.attention), [ref[e] for e in zip(heads, rels, tails)], rtol=1e-5
  )


def test_kgat_triple_sampler_draws_as_kgat_does(toy):
  """Heads uniform over the CKG's heads, a triple of the head (inverses included), negatives
  never a triple of (h, r), drawn over all user and entity rows; deterministic per (seed, epoch)."""
  ds = toy
  s = baselines.KGATTripleSampler(ds, batch_size=64)
  triples = set(_ckg_triples(ds))
  assert s.steps == len(triples) // 64 + 1
  b = s.epoch(2024, 3)
  assert b["head"].shape == (s.steps, 64)
  drawn = set(zip(b["head"].ravel(), b["relation"].ravel(), b["tail"].ravel()))
  assert drawn <= triples
  assert any(r > ds.n_relations for _, r, _ in drawn)  # inverse relations are drawn
  for h, r, n in zip(b["head"].ravel(), b["relation"].ravel(), b["neg_tail"].ravel()):
    assert (h, r, n) not in triples
    assert 0 <= n < ds.n_users + ds.n_entities
  again = s.epoch(2024, 3)
  for k in b:
    np.testing.assert_array_equal(b[k], again[k])
  # uniform over heads, not over triples: every head is drawn about equally often
  many = np.concatenate([s.epoch(1, e)["head"].ravel() for e in range(40)])
  counts = np.bincount(many, minlength=ds.n_users + ds.n_entities)[sorted({t[0] for t in triples})]
  assert counts.min() > 0.5 * counts.mean() and counts.max() < 1.5 * counts.mean()


def test_kgat_resumes_exactly_with_its_epoch_attention(tmp_path):
  """The attention of an epoch is recomputed from the restored parameters: 2 epochs, then a resume
  to 4, equal 4 epochs in one go (every logged term and metric)."""
  base = kgat_config.get_config("synthetic")
  base.synthetic_dir = str(tmp_path / "data")
  base.train.plot, base.train.patience = False, 100
  whole = copy.deepcopy(base)
  whole.train.max_epochs = 4
  train.train_and_evaluate(whole, str(tmp_path / "whole"))
  part = copy.deepcopy(base)
  part.train.max_epochs = 2
  train.train_and_evaluate(part, str(tmp_path / "part"))
  part.train.max_epochs = 4
  train.train_and_evaluate(part, str(tmp_path / "part"))
  read = lambda d: [
    {k: v for k, v in json.loads(x).items() if "seconds" not in k}
    for x in open(tmp_path / d / "metrics.jsonl")
  ]
  assert read("part") == read("whole")


def test_kgat_starts_from_a_pretrained_run(tmp_path):
  """kgat.pretrain: the user and item rows start from a BPR-MF run's best parameters (LightGCN
  with no layer), the other rows from the usual initialisation."""
  mf = lightgcn_config.get_config("synthetic")
  mf.synthetic_dir = str(tmp_path / "data")
  mf.model.num_layers = 0
  mf.train.max_epochs, mf.train.plot = 2, False
  train.train_and_evaluate(mf, str(tmp_path / "mf"))
  rows = baselines.load_pretrained_rows(str(tmp_path / "mf"), 300, 200, mf.model.embed_dim)
  c = kgat_config.get_config("synthetic")
  c.synthetic_dir = str(tmp_path / "data")
  c.model.embed_dim = mf.model.embed_dim
  c.kgat.pretrain = str(tmp_path / "mf")
  ds = steps.setup(c)[0]
  net = steps.create_model(c, ds)
  table = np.asarray(net.init_params(jax.random.PRNGKey(0))["node_embedding"]["embedding"])
  np.testing.assert_array_equal(table[: ds.n_users + ds.n_items], rows)
  plain = steps.create_model(kgat_config.get_config("synthetic"), ds)
  other = np.asarray(plain.init_params(jax.random.PRNGKey(0))["node_embedding"]["embedding"])
  if other.shape == table.shape:
    np.testing.assert_array_equal(
      table[ds.n_users + ds.n_items :], other[ds.n_users + ds.n_items :]
    )
  np.savez(tmp_path / "mf.npz", user_embed=rows[:300], item_embed=rows[300:])
  got = baselines.load_pretrained_rows(str(tmp_path / "mf.npz"), 300, 200, mf.model.embed_dim)
  np.testing.assert_array_equal(got, rows)
  with pytest.raises(ValueError, match="pretrained rows have shape"):
    baselines.load_pretrained_rows(str(tmp_path / "mf"), 300, 200, mf.model.embed_dim + 1)
  with pytest.raises(ValueError, match="must be a run directory"):
    baselines.load_pretrained_rows(str(tmp_path / "nowhere"), 300, 200, 8)


def test_unknown_model_name_is_refused():
  c = simgcl_config.get_config("synthetic")
  c.model.name = "ngcf"
  with pytest.raises(ValueError, match="unknown config.model.name 'ngcf'"):
    steps.model_name(c)
  with pytest.raises(ValueError, match="unknown config.model.name 'ngcf'"):
    steps.create_model(c, None)
  for name in ("cikgrec", "lightgcn", "simgcl", "kgat"):
    c.model.name = name
    assert steps.model_name(c) == name


# ---- init_params against Flax's declaration -------------------------------------------------
def test_simgcl_init_params_match_flax_init(toy):
  ds, c = toy, _simgcl_config()
  net = steps.create_model(c, ds)
  g = baselines.simgcl_make_graphs(None, ds, c)
  key = jax.random.PRNGKey(0)
  params = assert_init_params_match_flax(net, key, g)
  assert set(params) == {"node_embedding"}
  assert params["node_embedding"]["embedding"].shape == (ds.n_nodes, 6)
  batch = {
    "users": np.array([0, 1], np.int32),
    "pos": np.array([1, 2], np.int32),
    "neg": np.array([2, 3], np.int32),
    "mask": np.ones(2, np.float32),
  }
  assert_init_params_match_flax(net, key, g, batch, key, method="loss")


def test_kgat_initialisers_have_the_originals_bounds():
  """tf.contrib xavier: limit sqrt(6 / (fan_in + fan_out)), a 3-d shape's leading dimension
  multiplied into both fans; users and entities as two tables."""
  key = jax.random.PRNGKey(0)
  w = np.asarray(baselines.W_R_INIT(key, (30, 64, 64), jnp.float32))
  bound = np.sqrt(6 / (2 * 30 * 64))
  assert np.abs(w).max() <= bound and np.abs(w).max() > 0.99 * bound
  table = np.asarray(baselines.kgat_node_init(500)(key, (3500, 64), jnp.float32))
  for rows, n in ((table[:500], 500), (table[500:], 3000)):
    b = np.sqrt(6 / (n + 64))
    assert np.abs(rows).max() <= b and np.abs(rows).max() > 0.99 * b
  biases = np.asarray(baselines.kgat_bias_init(key, (4000,), jnp.float32))
  assert biases.shape == (4000,) and 0.99 * np.sqrt(6 / 4001) < np.abs(biases).max() <= np.sqrt(
    6 / 4001
  )


def test_kgat_init_params_match_flax_init(toy):
  """KGAT's __call__ (attention + bi-interaction layers) touches every parameter."""
  ds, c = toy, _kgat_config()
  net = steps.create_model(c, ds)
  g = baselines.kgat_make_graphs(None, ds, c)
  key = jax.random.PRNGKey(0)
  params = assert_init_params_match_flax(net, key, g)
  n_rel = 2 * (ds.n_relations + 1)
  assert set(params) == {
    "node_embedding",
    "relation_embedding",
    "w_r",
    "aggregators_0",
    "aggregators_1",
  }
  assert params["w_r"].shape == (n_rel, 6, 4)
  assert params["aggregators_0"]["sum"]["kernel"].shape == (6, 5)
  assert params["aggregators_1"]["bi"]["kernel"].shape == (5, 3)
  kb = {
    "head": np.array([4, 0], np.int32),
    "relation": np.array([0, 2], np.int32),
    "tail": np.array([8, 5], np.int32),
    "neg_tail": np.array([10, 7], np.int32),
  }
  assert_init_params_match_flax(net, key, g, kb, method=lambda m, g, kb: (m(g), m.kge_loss(kb)))


# ---- through the driver --------------------------------------------------------------------
def _run(tmp_path, module, name, epochs):
  c = module.get_config("synthetic")
  c.synthetic_dir = str(tmp_path / "data")
  c.train.max_epochs, c.train.patience, c.train.plot = epochs, 100, False
  workdir = str(tmp_path / name)
  res = train.train_and_evaluate(c, workdir)
  with open(os.path.join(workdir, "results.json")) as f:
    assert json.load(f)["best_epoch"] == res["best_epoch"]
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    lines = [json.loads(x) for x in f]
  assert [ln["epoch"] for ln in lines] == list(range(epochs))
  assert res["train_step_compilations"] == 1
  assert set(res["test"]) >= {f"{m}@{k}" for m in ("recall", "ndcg") for k in (20, 50, 100)}
  return res, lines


def test_simgcl_trains_on_synthetic(tmp_path):
  res, lines = _run(tmp_path, simgcl_config, "simgcl", 5)
  assert {"bpr", "cl_user", "cl_item"} <= set(lines[0]) and "kge" not in lines[0]
  for key in ("loss", "bpr", "cl"):  # lambda = 0.5: the contrastive term leads on this toy data
    assert lines[-1][key] < lines[0][key], key


def test_kgat_trains_on_synthetic(tmp_path):
  # its own CF batches (user-uniform, sampling.user_uniform_epoch), every other model's stay
  assert kgat_config.get_config("dbbook2014").train.cf_sampling == "users"
  assert lightgcn_config.get_config("dbbook2014").train.cf_sampling == "interactions"
  res, lines = _run(tmp_path, kgat_config, "kgat", 4)
  assert {"bpr", "kge"} <= set(lines[0])
  for key in ("loss", "bpr", "kge"):
    assert lines[-1][key] < lines[0][key], key
  assert max(ln["valid/recall@20"] for ln in lines[1:]) > lines[0]["valid/recall@20"]
  assert res["test"]["recall@20"] > 0.2  # random ranking: ~0.1

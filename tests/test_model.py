"""CIKGRec terms against independent dense numpy computations on a hand-sized CIKG, and the
explicit-key parameter initializer against Flax's own declaration of the parameters."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cikg_jax.data import dataset as dataset_lib
from cikg_jax.graphs import cikg as graph_lib
from cikg_jax.models import cikgrec
from cikg_jax.training import steps
from configs import tiny
from tests.test_data import _write
from tests.test_propagation import _dense_lightgcn as _layer_mean


@pytest.fixture()
def setup(tmp_path):
  root = tmp_path / "toy"
  _write(root, "train.txt", "0 0 1\n1 1 2\n2 2 3\n")
  _write(root, "test.txt", "0 2\n1 0\n2 0\n")
  _write(root, "kg_final.txt", "0 0 4\n1 0 4\n2 1 5\n3 1 5\n")
  _write(root, "user_interest_clustered.txt", "0 6\n1 6\n1 7\n2 8\n")
  ds = dataset_lib.load_dataset(str(tmp_path), "toy", selection="test")
  c = tiny.get_config()
  c.model.embed_dim = 8
  c.model.num_layers = 2
  c.uir.enc_layers, c.uir.dec_layers, c.uir.gamma = 2, 1, 2.0
  gs = graph_lib.build_graphs(ds, views="paper")
  graphs = steps.make_graphs(gs, ds, c)
  params = steps.create_model(c, ds).init_params(jax.random.PRNGKey(0))
  params["mask_token"] = jnp.full((1, 8), 0.3)
  return ds, c, gs, graphs, params


def _ego(params):
  return np.asarray(params["node_embedding"]["embedding"], np.float64)


def _dense(g, n, weights=None):
  a = np.zeros((n, n))
  w = np.ones(len(g.senders)) if weights is None else np.asarray(weights)
  np.add.at(a, (np.asarray(g.receivers), np.asarray(g.senders)), w)
  deg = a.sum(1)
  inv = np.where(deg > 0, deg**-0.5, 0)
  return inv[:, None] * a * inv[None, :]


def _norm(x):
  # F.normalize's convention: a zero row stays zero (cosine 0), e.g. a masked interest node whose
  # edges were all dropped decodes to zero
  return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def test_choose_masked_rows_counts():
  for n, p, r in [(544, 0.05, 0.15), (381, 0.75, 0.15), (10, 0.5, 0.0), (7, 0.0, 0.2)]:
    chosen, token, noise = cikgrec.choose_masked_rows(jax.random.PRNGKey(3), n, jnp.float32(p), r)
    k = int(np.floor(p * n + 1e-6))
    assert int(chosen.sum()) == k
    assert int(noise.sum()) == int(np.floor(r * k))
    assert not np.any(np.asarray(token) & np.asarray(noise))
    assert np.array_equal(np.asarray(token | noise), np.asarray(chosen))


@pytest.mark.parametrize("edge_drop", [0.0, 0.5])
def test_uir_loss_against_numpy(setup, edge_drop):
  ds, c, gs, graphs, params = setup
  c.uir.edge_drop = edge_drop
  c.uir.replace_rate = 0.5
  graphs = steps.make_graphs(gs, ds, c)  # the reconstruction's graph depends on edge_drop
  key, rate = jax.random.PRNGKey(7), jnp.float32(0.67)
  net = steps.create_model(c, ds)  # the module's fields now carry edge_drop and replace_rate
  assert (net.reconstruction.edge_drop, net.reconstruction.replace_rate) == (edge_drop, 0.5)
  got, n_masked = net.apply({"params": params}, graphs, key, rate, method="uir_loss")
  # The random draws, exactly as uir_loss makes them; the rest is recomputed densely.
  rows = np.asarray(graphs.interest_rows)
  k_choose, k_noise, k_drop = jax.random.split(key, 3)
  chosen, token, noise = map(np.asarray, cikgrec.choose_masked_rows(k_choose, len(rows), rate, 0.5))
  donors = rows[np.asarray(jax.random.randint(k_noise, rows.shape, 0, len(rows)))]
  assert int(n_masked) == 2 and noise.sum() == 1  # floor(0.67 * 3) rows
  ego = _ego(params)
  x = ego.copy()
  x[rows[token]] = 0.3
  x[rows[noise]] = ego[donors[noise]]
  n = ds.n_nodes
  if edge_drop > 0:  # drop edges, add self loops; the decoder uses the same graph
    from cikg_jax.graphs import propagation as prop

    op = prop.make_operator(gs["cikg_with_loops"])
    keep = np.asarray(prop.edge_keep_mask(op, k_drop, edge_drop))
    a_enc = _dense(gs["cikg_with_loops"], n, keep)
  else:
    a_enc = _dense(gs["cikg_no_loops"], n)
  enc = _layer_mean(a_enc, x, 2)
  kern, bias = np.asarray(params["e2d"]["kernel"]), np.asarray(params["e2d"]["bias"])
  h = enc @ kern + bias
  h[rows[chosen]] = 0.0
  dec = _layer_mean(a_enc, h, 1)
  cos = np.sum(_norm(dec[rows[chosen]]) * _norm(ego[rows[chosen]]), axis=1)
  ref = np.mean((1 - cos) ** 2)
  assert float(got) == pytest.approx(ref, rel=1e-4)


def test_cl_loss_against_numpy(setup):
  ds, c, gs, graphs, params = setup
  c.cl.eps = 0.0  # noise checked separately below
  batch = {
    "users": np.array([0, 2, 1, 0], np.int32),
    "pos": np.array([1, 3, 2, 0], np.int32),
    "mask": np.array([1, 1, 1, 0], np.float32),
  }
  net = steps.create_model(c, ds)
  user_term, item_term = net.apply(
    {"params": params}, graphs, batch, jax.random.PRNGKey(0), method="cl_loss"
  )
  n, nu = ds.n_nodes, ds.n_users
  ego = _ego(params)
  z = {v: _norm(_layer_mean(_dense(gs[v], n), ego, 2)) for v in ("cf", "interest", "kg")}
  tau = c.cl.tau

  def nce(anchors, cands, pos):
    s = anchors @ cands.T / tau
    return np.mean([np.log(np.exp(s[r]).sum()) - s[r, pos[r]] for r in range(3)])

  u, p = batch["users"], batch["pos"]
  assert float(user_term) == pytest.approx(nce(z["cf"][u], z["interest"][:nu], u), rel=1e-4)
  assert float(item_term) == pytest.approx(nce(z["cf"][nu + p], z["kg"][nu:], p), rel=1e-4)


def test_simgcl_noise_is_sign_aligned_with_norm_eps():
  e = jax.random.normal(jax.random.PRNGKey(0), (50, 8))
  out = cikgrec.simgcl_noise(jax.random.PRNGKey(1), 0.1)(0, e)
  delta = np.asarray(out - e)
  np.testing.assert_allclose(np.linalg.norm(delta, axis=1), 0.1, rtol=1e-5)
  assert np.all(np.sign(delta) == np.sign(np.asarray(e)))


def test_switching_a_module_off_changes_exactly_that_term(tmp_path):
  base = tiny.get_config()
  base.synthetic_dir = str(tmp_path / "data")

  def terms(cfg):
    ds, cfg, net, graphs = steps.setup(cfg)
    params = net.init_params(jax.random.PRNGKey(0))
    batch = {
      "users": np.arange(64, dtype=np.int32),
      "pos": np.arange(64, dtype=np.int32) % 50,
      "neg": np.arange(64, dtype=np.int32) % 50 + 100,
      "mask": np.ones(64, np.float32),
    }
    _, m = net.apply(
      {"params": params}, graphs, batch, jax.random.PRNGKey(1), np.float32(0.4), method="loss"
    )
    return {k: float(v) for k, v in m.items()}

  full = terms(base)
  assert {"bpr", "reg", "cl", "uir"} <= set(full)
  no_cl = base.copy_and_resolve_references()
  no_cl.cl.weight = 0.0
  no_uir = base.copy_and_resolve_references()
  no_uir.uir.weight = 0.0
  for cfg, gone in ((no_cl, "cl"), (no_uir, "uir")):
    t = terms(cfg)
    assert gone not in t
    for k in ("bpr", "reg", "cl", "uir"):
      if k != gone:
        assert t[k] == pytest.approx(full[k], rel=1e-6), (gone, k)
    assert t["loss"] == pytest.approx(full["loss"] - full[gone], rel=1e-5)


# ---- init_params against Flax's declaration ------------------------------------------------------
def assert_init_params_match_flax(net, key, *args, method=None):
  """`net.init_params(key)` (the explicit key split every run has used) has exactly the leaves,
  shapes and dtypes that Flax's own `net.init` declares for a method touching every parameter."""
  explicit = net.init_params(key)
  declared = jax.eval_shape(lambda: net.init(key, *args, method=method))["params"]
  assert declared, "Flax declared no parameters"
  paths = lambda tree: sorted(
    jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]
  )
  assert paths(explicit) == paths(declared)
  assert jax.tree_util.tree_structure(explicit) == jax.tree_util.tree_structure(dict(declared))
  shape = lambda tree: jax.tree_util.tree_map(lambda x: (tuple(x.shape), str(x.dtype)), tree)
  assert shape(explicit) == shape(dict(declared))
  return explicit


def _toy_batches(ds):
  batch = {
    "users": np.array([0, 1, 2, 0], np.int32),
    "pos": np.array([0, 1, 2, 3], np.int32),
    "neg": np.array([3, 2, 1, 0], np.int32),
    "mask": np.array([1, 1, 1, 0], np.float32),
  }
  kge_batch = {
    "head": np.array([3, 4], np.int32),
    "relation": np.array([0, 1], np.int32),
    "tail": np.array([7, 8], np.int32),
    "neg_tail": np.array([5, 6], np.int32),
  }
  return batch, kge_batch


def test_lightgcn_init_params_match_flax_init(setup):
  ds, c, gs, _, _ = setup
  c.model.name = "lightgcn"
  c.uir.weight = c.cl.weight = 0.0
  c.kge.use = False
  net = steps.create_model(c, ds)
  assert type(net) is cikgrec.LightGCN
  graphs = steps.make_graphs(gs, ds, c)
  params = assert_init_params_match_flax(net, jax.random.PRNGKey(0), graphs)
  assert params["node_embedding"]["embedding"].shape == (ds.n_nodes, 8)


def test_cikgrec_init_params_match_flax_init(setup):
  """Every module on (UIR, CL, TransE): __call__ touches only the node table, so Flax initialises
  through the loss and the TransE loss together; every leaf of init_params is declared."""
  ds, c, gs, graphs, _ = setup
  assert c.uir.weight > 0 and c.cl.weight > 0 and c.kge.use
  net = steps.create_model(c, ds)
  assert type(net) is cikgrec.CIKGRec
  batch, kge_batch = _toy_batches(ds)

  def touch_all(m, g, b, key, kb):
    return m.loss(g, b, key, 0.5), m.kge_loss(kb)

  key = jax.random.PRNGKey(0)
  params = assert_init_params_match_flax(net, key, graphs, batch, key, kge_batch, method=touch_all)
  n_rel = ds.n_relations + 1  # paper views: KG relations + interact
  assert set(params) == {"node_embedding", "mask_token", "e2d", "relation_embedding"}
  assert params["relation_embedding"]["embedding"].shape == (n_rel, 8)
  assert params["e2d"]["kernel"].shape == (8, 8) and params["mask_token"].shape == (1, 8)
  assert not np.any(np.asarray(params["mask_token"]))  # zeros, as the release's
  # the explicit keys: table, encoder-to-decoder, relations = split(key, 3)
  k_emb, _, k_rel = jax.random.split(key, 3)
  xavier = jax.nn.initializers.xavier_uniform()
  np.testing.assert_array_equal(
    params["node_embedding"]["embedding"], xavier(k_emb, (ds.n_nodes, 8), jnp.float32)
  )
  np.testing.assert_array_equal(
    params["relation_embedding"]["embedding"], xavier(k_rel, (n_rel, 8), jnp.float32)
  )
  # switching modules off drops exactly their parameters, in both initialisers
  c.uir.weight = 0.0
  c.kge.use = False
  off = steps.create_model(c, ds)
  params = assert_init_params_match_flax(off, key, graphs, batch, key, method="loss")
  assert set(params) == {"node_embedding"}

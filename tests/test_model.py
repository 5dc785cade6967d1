"""CIKGRec terms against independent dense numpy computations on a hand-sized CIKG."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cikg_jax import graph as graph_lib
from cikg_jax import model, train
from cikg_jax.data import dataset as dataset_lib
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
  ds = dataset_lib.load_dataset(str(tmp_path), "toy", selection="test", verbose=False)
  c = tiny.get_config()
  c.model.embed_dim = 8
  c.model.num_layers = 2
  c.uir.enc_layers, c.uir.dec_layers, c.uir.gamma = 2, 1, 2.0
  gs = graph_lib.build_graphs(ds, views="paper", verbose=False)
  graphs = model.make_graphs(gs, ds, c)
  params = model.init_params(jax.random.PRNGKey(0), ds.n_nodes, ds.n_relations + 1, c)
  params["mask_token"] = jnp.full((1, 8), 0.3)
  return ds, c, gs, graphs, params


def _dense(g, n, weights=None):
  a = np.zeros((n, n))
  w = np.ones(len(g.senders)) if weights is None else np.asarray(weights)
  np.add.at(a, (np.asarray(g.receivers), np.asarray(g.senders)), w)
  deg = a.sum(1)
  inv = np.where(deg > 0, deg ** -0.5, 0)
  return inv[:, None] * a * inv[None, :]




def _norm(x):
  # F.normalize's convention: a zero row stays zero (cosine 0), e.g. a masked interest node whose
  # edges were all dropped decodes to zero
  return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def test_choose_masked_rows_counts():
  for n, p, r in [(544, 0.05, 0.15), (381, 0.75, 0.15), (10, 0.5, 0.0), (7, 0.0, 0.2)]:
    chosen, token, noise = model.choose_masked_rows(jax.random.PRNGKey(3), n, jnp.float32(p), r)
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
  key, rate = jax.random.PRNGKey(7), jnp.float32(0.67)
  got, n_masked = model.uir_loss(params, graphs, key, rate, c)
  # The random draws, exactly as uir_loss makes them; the rest is recomputed densely.
  rows = np.asarray(graphs.interest_rows)
  k_choose, k_noise, k_drop = jax.random.split(key, 3)
  chosen, token, noise = map(np.asarray, model.choose_masked_rows(k_choose, len(rows), rate, 0.5))
  donors = rows[np.asarray(jax.random.randint(k_noise, rows.shape, 0, len(rows)))]
  assert int(n_masked) == 2 and noise.sum() == 1  # floor(0.67 * 3) rows
  ego = np.asarray(params["embedding"], np.float64)
  x = ego.copy()
  x[rows[token]] = 0.3
  x[rows[noise]] = ego[donors[noise]]
  n = ds.n_nodes
  if edge_drop > 0:  # drop edges, add self loops; the decoder uses the same graph
    from cikg_jax import propagation as prop
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
  batch = {"users": np.array([0, 2, 1, 0], np.int32), "pos": np.array([1, 3, 2, 0], np.int32),
           "mask": np.array([1, 1, 1, 0], np.float32)}
  user_term, item_term = model.cl_loss(params, graphs, batch, jax.random.PRNGKey(0), c)
  n, nu = ds.n_nodes, ds.n_users
  ego = np.asarray(params["embedding"], np.float64)
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
  out = model.simgcl_noise(jax.random.PRNGKey(1), 0.1)(0, e)
  delta = np.asarray(out - e)
  np.testing.assert_allclose(np.linalg.norm(delta, axis=1), 0.1, rtol=1e-5)
  assert np.all(np.sign(delta) == np.sign(np.asarray(e)))


def test_switching_a_module_off_changes_exactly_that_term(tmp_path):
  base = tiny.get_config()
  base.synthetic_dir = str(tmp_path / "data")

  def terms(cfg):
    ds, cfg, graphs = train.setup(cfg, verbose=False)
    params = model.init_params(jax.random.PRNGKey(0), ds.n_nodes, ds.n_relations + 1, cfg)
    batch = {"users": np.arange(64, dtype=np.int32), "pos": np.arange(64, dtype=np.int32) % 50,
             "neg": np.arange(64, dtype=np.int32) % 50 + 100, "mask": np.ones(64, np.float32),
             "mask_rate": np.float32(0.4)}
    _, m = model.total_loss(params, graphs, batch, jax.random.PRNGKey(1), cfg)
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

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cikg_jax.graphs import cikg as graph_lib
from cikg_jax.graphs import propagation as prop


def _random_graph(n=30, n_pairs=70, seed=0, loops=True):
  rng = np.random.default_rng(seed)
  pairs = rng.integers(n, size=(n_pairs, 2))  # includes duplicates and a few data self loops
  return graph_lib.make_graph(n, pairs, np.arange(n) if loops else None), pairs


def _dense_adjacency(n, pairs, loops, keep_pair=None):
  canon = np.unique(np.sort(pairs, axis=1), axis=0)
  a = np.zeros((n, n))
  for k, (i, j) in enumerate(canon):
    w = 1.0 if keep_pair is None else float(keep_pair[k])
    a[i, j] = w
    a[j, i] = w
  if loops:
    a += np.eye(n)
  deg = a.sum(1)
  inv = np.where(deg > 0, deg**-0.5, 0.0)
  return inv[:, None] * a * inv[None, :]


def _dense_lightgcn(a_hat, x, num_layers):
  layers, e = [x], x
  for _ in range(num_layers):
    e = a_hat @ e
    layers.append(e)
  return np.mean(layers, axis=0)


@pytest.mark.parametrize("backend", prop.BACKENDS)
@pytest.mark.parametrize("loops", [True, False])
def test_forward_matches_dense(backend, loops):
  g, pairs = _random_graph(loops=loops)
  op = prop.make_operator(g)
  x = np.random.default_rng(1).standard_normal((30, 8)).astype(np.float32)
  out = prop.propagate(op, jnp.asarray(x), 3, backend=backend)
  ref = _dense_lightgcn(_dense_adjacency(30, pairs, loops), x, 3)
  np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", prop.BACKENDS)
def test_gradient_matches_dense(backend):
  g, pairs = _random_graph()
  op = prop.make_operator(g)
  rng = np.random.default_rng(2)
  x = rng.standard_normal((30, 8)).astype(np.float32)
  c = rng.standard_normal((30, 8)).astype(np.float32)
  a_hat = _dense_adjacency(30, pairs, True)
  grad = jax.grad(lambda e: jnp.sum(jnp.sin(prop.propagate(op, e, 2, backend=backend)) * c))(x)
  # d/dx sum(sin(M x) * c) = M^T (cos(M x) * c), M = (I + A + A^2) / 3
  m = (np.eye(30) + a_hat + a_hat @ a_hat) / 3
  ref = m.T @ (np.cos(m @ x) * c)
  np.testing.assert_allclose(np.asarray(grad), ref, rtol=1e-4, atol=1e-5)


def test_asymmetric_operator_uses_transpose():
  """The custom VJP must use A^T, not assume A is symmetric."""
  import jraph

  senders = np.array([1, 2, 0], np.int32)
  receivers = np.array([0, 0, 2], np.int32)
  g = jraph.GraphsTuple(
    nodes=None,
    edges={"pair": np.arange(3, dtype=np.int32)},
    senders=senders,
    receivers=receivers,
    globals=None,
    n_node=np.array([3]),
    n_edge=np.array([3]),
  )
  op = prop.make_operator(g)
  w = jnp.array([1.0, 2.0, 3.0])
  a = np.zeros((3, 3))
  a[receivers, senders] = [1.0, 2.0, 3.0]
  c = np.arange(6, dtype=np.float32).reshape(3, 2)
  for backend in prop.BACKENDS:
    grad = jax.grad(lambda e: jnp.sum(prop.spmm(op, w, e, backend) * c))(jnp.ones((3, 2)))
    np.testing.assert_allclose(np.asarray(grad), a.T @ c)


@pytest.mark.parametrize("backend", prop.BACKENDS)
def test_edge_dropout_drops_undirected_pairs_and_renormalises(backend):
  g, pairs = _random_graph(seed=3)
  op = prop.make_operator(g)
  mask = prop.edge_keep_mask(op, jax.random.PRNGKey(0), 0.5)
  pair = np.asarray(g.edges["pair"])
  m = np.asarray(mask)
  assert np.all(m[pair < 0] == 1.0)  # added self loops are never dropped
  keep_pair = np.zeros(op.n_pairs)
  for p, v in zip(pair, m):
    if p >= 0:
      keep_pair[p] = v
  for p in range(op.n_pairs):  # both directions of a pair share one coin
    assert len(set(m[pair == p])) == 1
  assert 0 < keep_pair.mean() < 1
  x = np.random.default_rng(4).standard_normal((30, 4)).astype(np.float32)
  w = prop.normalized_weights(op, mask)
  out = prop.propagate(op, jnp.asarray(x), 2, weights=w, backend=backend)
  ref = _dense_lightgcn(_dense_adjacency(30, pairs, True, keep_pair), x, 2)
  np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-5, atol=1e-5)


def test_backends_agree_and_light_gcn_on_a_graphs_tuple():
  g, pairs = _random_graph(n=50, n_pairs=200, seed=5)
  op = prop.make_operator(g)
  x = jax.random.normal(jax.random.PRNGKey(0), (50, 16))
  ref = _dense_lightgcn(_dense_adjacency(50, pairs, True), np.asarray(x, np.float64), 3)
  outs = [prop.propagate(op, x, 3, backend=b) for b in prop.BACKENDS]
  np.testing.assert_allclose(np.asarray(outs[0]), np.asarray(outs[1]), rtol=1e-5, atol=1e-6)
  for b in prop.BACKENDS:  # the GraphsTuple entry point: nodes in, layer mean out as nodes
    out = prop.light_gcn(prop.with_inputs(op, x), 3, op.csr, b)
    assert out.senders is op.graph.senders and out.receivers is op.graph.receivers
    np.testing.assert_allclose(np.asarray(out.nodes), ref, rtol=1e-5, atol=1e-5)


def test_operator_rejects_unsorted_edges():
  import jraph

  g = jraph.GraphsTuple(
    nodes=None,
    edges={"pair": np.array([0, 0], np.int32)},
    senders=np.array([0, 1], np.int32),
    receivers=np.array([1, 0], np.int32),
    globals=None,
    n_node=np.array([2]),
    n_edge=np.array([2]),
  )
  with pytest.raises(ValueError, match="sorted by receiver"):
    prop.make_operator(g)


def test_precomputed_weights_match_traced_normalisation():
  g, _ = _random_graph(seed=9)
  op = prop.make_operator(g)
  np.testing.assert_allclose(
    np.asarray(op.weights), np.asarray(prop.normalized_weights(op)), rtol=1e-6
  )

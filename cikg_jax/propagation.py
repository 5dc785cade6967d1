"""LightGCN propagation E^(l+1) = D^-1/2 A D^-1/2 E^(l), output = mean of layers 0..L.

One entry point, `propagate`, with two backends over the same receiver-sorted edge arrays:
- "segment": gather + `jax.ops.segment_sum` (jraph's message passing; the usual fast path on GPU);
- "bcsr": a CSR sparse-dense product with XLA:CPU's native kernel and a custom VJP through the
  transposed matrix (~10-15x faster than the gather on CPU, docs/method.md §7).
Edge weights are an explicit input so edge dropout keeps static shapes: a 0/1 mask per undirected
pair, degrees recomputed from the kept edges.
"""

from __future__ import annotations

import functools
from typing import Callable, Optional

import flax.struct
import jax
from jax.experimental import sparse
import jax.numpy as jnp
import jraph
import numpy as np

BACKENDS = ("segment", "bcsr")


@flax.struct.dataclass
class CSR:
  """Side arrays of the CSR kernel, computed once per graph: the CSR structure of A (its column
  indices are the graph's senders) and of A^T, and the permutation from A's edge order to A^T's."""

  indptr: jnp.ndarray  # CSR rows = receivers
  t_indptr: jnp.ndarray  # CSR of A^T: rows = senders
  t_indices: jnp.ndarray
  t_perm: jnp.ndarray  # data of A^T = data of A [t_perm]


@flax.struct.dataclass
class Operator:
  """A graph ready for propagation: a GraphsTuple sorted by receiver whose `edges` hold the
  undirected pair id of every directed edge (`pair`, -1 for an added self loop) and its weight
  D^-1/2 A D^-1/2 without dropout (`weight`), plus the CSR kernel's side arrays."""

  graph: jraph.GraphsTuple
  csr: CSR
  n_nodes: int = flax.struct.field(pytree_node=False)
  n_pairs: int = flax.struct.field(pytree_node=False)

  @property
  def weights(self) -> jnp.ndarray:
    return self.graph.edges["weight"]


def make_operator(graph: jraph.GraphsTuple, on_device: bool = True) -> Operator:
  """The operator of a receiver-sorted graph. `on_device=False` keeps its arrays in host memory
  (numpy), for the graph-parallel modes, which place only each device's part of them."""
  xp = jnp if on_device else np
  senders = np.asarray(graph.senders)
  receivers = np.asarray(graph.receivers)
  n = int(np.asarray(graph.n_node)[0])
  if np.any(np.diff(receivers) < 0):
    raise ValueError("graph edges must be sorted by receiver (use graph.make_graph)")
  indptr = np.zeros(n + 1, np.int64)
  np.add.at(indptr, receivers.astype(np.int64) + 1, 1)
  t_perm = np.lexsort((receivers, senders))
  t_indptr = np.zeros(n + 1, np.int64)
  np.add.at(t_indptr, senders.astype(np.int64) + 1, 1)
  pair = np.asarray(graph.edges["pair"])
  deg = np.bincount(receivers, minlength=n).astype(np.float64)
  inv_sqrt = np.where(deg > 0, 1.0 / np.sqrt(np.maximum(deg, 1e-12)), 0.0)
  weights = (inv_sqrt[senders] * inv_sqrt[receivers]).astype(np.float32)
  graph = graph._replace(
    senders=xp.asarray(senders),
    receivers=xp.asarray(receivers),
    edges={"pair": xp.asarray(pair), "weight": xp.asarray(weights)},
    n_node=xp.asarray(graph.n_node),
    n_edge=xp.asarray(graph.n_edge),
  )
  csr = CSR(
    indptr=xp.asarray(np.cumsum(indptr), np.int32),
    t_indptr=xp.asarray(np.cumsum(t_indptr), np.int32),
    t_indices=xp.asarray(receivers[t_perm], np.int32),
    t_perm=xp.asarray(t_perm, np.int32),
  )
  return Operator(
    graph=graph, csr=csr, n_nodes=n, n_pairs=int(pair.max()) + 1 if (pair >= 0).any() else 0
  )


def stack_graphs(graphs) -> jraph.GraphsTuple:
  """Block-diagonal union of graphs over the same n nodes: graph k acts on rows k*n..(k+1)*n-1.

  One product with it propagates k inputs stacked as (k*n, d) with one kernel call per layer and
  direction instead of k. Each block keeps its own degrees, and each row its edges in the same
  order, so its rows equal the separate products' bit for bit."""
  n = int(np.asarray(graphs[0].n_node)[0])
  senders, receivers, pairs = [], [], []
  n_pairs = 0
  for k, g in enumerate(graphs):
    if int(np.asarray(g.n_node)[0]) != n:
      raise ValueError("stacked graphs must share one node table")
    senders.append(np.asarray(g.senders) + k * n)
    receivers.append(np.asarray(g.receivers) + k * n)
    pair = np.asarray(g.edges["pair"])
    pairs.append(np.where(pair < 0, -1, pair + n_pairs))
    n_pairs += int(pair.max()) + 1 if (pair >= 0).any() else 0
  cat = lambda xs: np.concatenate(xs).astype(np.int32)
  return jraph.GraphsTuple(
    nodes=None,
    globals=None,
    senders=cat(senders),
    receivers=cat(receivers),
    edges={"pair": cat(pairs)},
    n_node=np.array([n * len(graphs)], np.int32),
    n_edge=np.array([sum(len(s) for s in senders)], np.int32),
  )


# ---- random draws ---------------------------------------------------------------------------
def _threefry2x32(k1, k2, x1, x2):
  """The Threefry-2x32 hash (20 rounds) with the rounds unrolled: the integer operations of JAX's
  own `threefry2x32` primitive, in the same order, so the same bits. On CPU JAX lowers that
  primitive as a rolled 5-step while loop whose body reads and writes the whole (n, d) state each
  step; unrolled, XLA fuses the hash with what consumes it (README "Speed": 3x on the SimGCL
  noise draws)."""
  rotations = ((13, 15, 26, 6), (17, 29, 16, 24))
  ks = (k1, k2, k1 ^ k2 ^ np.uint32(0x1BD11BDA))
  x1, x2 = x1 + ks[0], x2 + ks[1]
  for i in range(5):
    for r in rotations[i % 2]:
      x1 = x1 + x2
      x2 = x1 ^ ((x2 << np.uint32(r)) | (x2 >> np.uint32(32 - r)))
    x1 = x1 + ks[(i + 1) % 3]
    x2 = x2 + ks[(i + 2) % 3] + np.uint32(i + 1)
  return x1, x2


def uniform(key, shape) -> jnp.ndarray:
  """`jax.random.uniform(key, shape)` (float32 in [0, 1)) bit for bit, computed with the unrolled
  hash above: JAX's partitionable threefry bits for a counter over the flattened shape, and its
  mantissa trick. Falls back to jax.random.uniform for any other PRNG set-up (tests/test_speed.py
  checks the equality)."""
  size = int(np.prod(shape))
  if isinstance(key, jax.Array) and jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
    raw = jax.random.key_data(key) if str(jax.random.key_impl(key)) == "threefry2x32" else None
  else:
    raw = key if jax.config.jax_default_prng_impl == "threefry2x32" else None
  if raw is None or raw.shape != (2,) or not jax.config.jax_threefry_partitionable or size >= 2**32:
    return jax.random.uniform(key, shape)
  raw = raw.astype(jnp.uint32)
  counter = jax.lax.iota(jnp.uint32, size).reshape(shape)  # the count's high word is 0
  b1, b2 = _threefry2x32(raw[0], raw[1], jnp.zeros(shape, jnp.uint32), counter)
  mantissa = ((b1 ^ b2) >> np.uint32(32 - 23)) | np.uint32(0x3F800000)  # [1, 2)
  return jax.lax.bitcast_convert_type(mantissa, jnp.float32) - jnp.float32(1.0)


def edge_keep_mask(op: Operator, key: jax.Array, drop_rate: float) -> jnp.ndarray:
  """Per directed edge 0/1 weights dropping whole undirected pairs; added self loops stay."""
  # jax.random.bernoulli(key, 1 - drop_rate, shape), the same draws through `uniform`
  keep_pair = uniform(key, (max(op.n_pairs, 1),)) < jnp.float32(1.0 - drop_rate)
  pair = op.graph.edges["pair"]
  return jnp.where(pair < 0, True, keep_pair[jnp.maximum(pair, 0)]).astype(jnp.float32)


def normalized_weights(op: Operator, edge_weight: Optional[jnp.ndarray] = None) -> jnp.ndarray:
  """w_e / sqrt(deg(s) deg(r)) with degrees from the (kept) edges; isolated nodes get 0."""
  g = op.graph
  w = jnp.ones(g.senders.shape, jnp.float32) if edge_weight is None else edge_weight
  deg = jax.ops.segment_sum(w, g.receivers, op.n_nodes, indices_are_sorted=True)
  inv_sqrt = jnp.where(deg > 0, jax.lax.rsqrt(jnp.maximum(deg, 1e-12)), 0.0)
  return w * inv_sqrt[g.senders] * inv_sqrt[g.receivers]


def _csr_matmul(data, indices, indptr, x):
  """CSR (rows = len(indptr) - 1, columns = rows of x) @ x; square for a whole graph, a row block
  of it (graph_parallel) otherwise."""
  return sparse.BCSR((data, indices, indptr), shape=(indptr.shape[0] - 1, x.shape[0])) @ x


@jax.custom_vjp
def _bcsr_spmm(data, x, indices, indptr, t_indices, t_indptr, t_perm):
  return _csr_matmul(data, indices, indptr, x)


def _bcsr_fwd(data, x, indices, indptr, t_indices, t_indptr, t_perm):
  return (_csr_matmul(data, indices, indptr, x), (data, t_indices, t_indptr, t_perm))


def _bcsr_bwd(res, g):
  data, t_indices, t_indptr, t_perm = res
  # The edge weights are fixed by the graph and the dropout mask, never learned: no cotangent.
  return (None, _csr_matmul(data[t_perm], t_indices, t_indptr, g), None, None, None, None, None)


_bcsr_spmm.defvjp(_bcsr_fwd, _bcsr_bwd)


def aggregate(
  graph: jraph.GraphsTuple, csr: Optional[CSR] = None, backend: str = "bcsr"
) -> jnp.ndarray:
  """One propagation step: sum over each node's incoming edges of weight * sender row, i.e.
  A_w @ nodes for `nodes` (n, d) and `edges["weight"]`. segment: jraph's gather + segment_sum;
  bcsr: the CSR kernel over the precomputed side arrays."""
  x, w = graph.nodes, graph.edges["weight"]
  if backend == "segment":
    messages = x[graph.senders] * w[:, None]
    return jax.ops.segment_sum(messages, graph.receivers, x.shape[0], indices_are_sorted=True)
  if backend == "bcsr":
    if csr is None:
      raise ValueError("the bcsr backend needs the graph's CSR side arrays (make_operator)")
    return _bcsr_spmm(w, x, graph.senders, csr.indptr, csr.t_indices, csr.t_indptr, csr.t_perm)
  raise ValueError(f"unknown propagation backend {backend!r}; choose from {BACKENDS}")


def light_gcn(
  graph: jraph.GraphsTuple,
  num_layers: int,
  csr: Optional[CSR] = None,
  backend: str = "bcsr",
  perturb: Optional[Callable[[int, jnp.ndarray], jnp.ndarray]] = None,
  include_input: bool = True,
) -> jraph.GraphsTuple:
  """LightGCN on a GraphsTuple whose `nodes` are the layer-0 embeddings and whose
  `edges["weight"]` are the normalised edge weights: returns the graph with `nodes` the mean of
  layers 0..L (1..L without `include_input`, SimGCL's encoder). `perturb(l, e)` edits each
  propagated layer before it is propagated further (SimGCL's noise)."""
  layers = [graph.nodes] if include_input else []
  e = graph.nodes
  for layer in range(num_layers):
    e = aggregate(graph._replace(nodes=e), csr, backend)
    if perturb is not None:
      e = perturb(layer, e)
    layers.append(e)
  return graph._replace(nodes=functools.reduce(jnp.add, layers) / len(layers))


def with_inputs(
  op: Operator, x: jnp.ndarray, weights: Optional[jnp.ndarray] = None
) -> jraph.GraphsTuple:
  """The operator's graph carrying node features `x` and (dropout-renormalised) edge weights."""
  edges = op.graph.edges if weights is None else {**op.graph.edges, "weight": weights}
  return op.graph._replace(nodes=x, edges=edges)


def spmm(op: Operator, weights: jnp.ndarray, x: jnp.ndarray, backend: str = "bcsr") -> jnp.ndarray:
  """One propagation step A_w @ x."""
  return aggregate(with_inputs(op, x, weights), op.csr, backend)


def propagate(
  op: Operator,
  x: jnp.ndarray,
  num_layers: int,
  weights: Optional[jnp.ndarray] = None,
  backend: str = "bcsr",
  perturb: Optional[Callable[[int, jnp.ndarray], jnp.ndarray]] = None,
  include_input: bool = True,
) -> jnp.ndarray:
  """`light_gcn` for arrays: the layer mean of `x` propagated over `op` (weights: op's own)."""
  return light_gcn(
    with_inputs(op, x, weights), num_layers, op.csr, backend, perturb, include_input
  ).nodes


def default_backend() -> str:
  """bcsr on CPU (native kernel), gather + segment_sum elsewhere."""
  return "bcsr" if jax.default_backend() == "cpu" else "segment"


def resolve_backend(backend: str) -> str:
  return default_backend() if backend == "auto" else backend

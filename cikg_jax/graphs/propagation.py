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

from cikg_jax import runtime

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


def csr_arrays(senders, receivers, n_rows: int, n_cols: int) -> CSR:
  """The CSR kernel's side arrays (numpy) of the (n_rows x n_cols) matrix with an entry per edge
  at (receiver, sender), edges sorted by receiver: a whole graph's (square), or a row block of
  it (graph_parallel)."""
  senders = np.asarray(senders).astype(np.int64)
  receivers = np.asarray(receivers).astype(np.int64)
  indptr = np.zeros(n_rows + 1, np.int64)
  np.add.at(indptr, receivers + 1, 1)
  t_perm = np.lexsort((receivers, senders))
  t_indptr = np.zeros(n_cols + 1, np.int64)
  np.add.at(t_indptr, senders + 1, 1)
  return CSR(
    indptr=np.cumsum(indptr).astype(np.int32),
    t_indptr=np.cumsum(t_indptr).astype(np.int32),
    t_indices=receivers[t_perm].astype(np.int32),
    t_perm=t_perm.astype(np.int32),
  )


def make_operator(graph: jraph.GraphsTuple, on_device: bool = True) -> Operator:
  """The operator of a receiver-sorted graph. `on_device=False` keeps its arrays in host memory
  (numpy), for the graph-parallel modes, which place only each device's part of them."""
  xp = jnp if on_device else np
  senders = np.asarray(graph.senders)
  receivers = np.asarray(graph.receivers)
  n = int(np.asarray(graph.n_node)[0])
  if np.any(np.diff(receivers) < 0):
    raise ValueError("graph edges must be sorted by receiver (use graph.make_graph)")
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
  csr = jax.tree_util.tree_map(xp.asarray, csr_arrays(senders, receivers, n, n))
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


def key_words(key):
  """The two uint32 words of a threefry2x32 key (a raw uint32[2] or a typed key), or None for
  any other PRNG set-up."""
  if isinstance(key, jax.Array) and jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
    raw = jax.random.key_data(key) if str(jax.random.key_impl(key)) == "threefry2x32" else None
  else:
    raw = key if jax.config.jax_default_prng_impl == "threefry2x32" else None
  if raw is None or raw.shape != (2,) or not jax.config.jax_threefry_partitionable:
    return None
  raw = raw.astype(jnp.uint32)
  return raw[0], raw[1]


def uniform_at(words, hi, lo) -> jnp.ndarray:
  """Element hi * 2^32 + lo (row-major index, any shape) of `jax.random.uniform(key, shape)` for
  the key's `words`: threefry2x32 of the 64-bit counter, its two words xor'ed, the top 23 bits as
  the mantissa of a float in [1, 2), minus 1 (jax's partitionable threefry bits and _uniform).
  Counter-based: a device of a mesh draws only its rows' elements (graph_parallel)."""
  b1, b2 = _threefry2x32(words[0], words[1], hi.astype(jnp.uint32), lo.astype(jnp.uint32))
  mantissa = ((b1 ^ b2) >> np.uint32(32 - 23)) | np.uint32(0x3F800000)  # [1, 2)
  return jax.lax.bitcast_convert_type(mantissa, jnp.float32) - jnp.float32(1.0)


def uniform(key, shape) -> jnp.ndarray:
  """`jax.random.uniform(key, shape)` (float32 in [0, 1)) bit for bit, computed with the unrolled
  hash above (`uniform_at` of every element). Falls back to jax.random.uniform for any other PRNG
  set-up (tests/test_speed.py checks the equality)."""
  size = int(np.prod(shape))
  words = key_words(key)
  if words is None or size >= 2**32:
    return jax.random.uniform(key, shape)
  counter = jax.lax.iota(jnp.uint32, size).reshape(shape)  # the count's high word is 0
  return uniform_at(words, jnp.zeros(shape, jnp.uint32), counter)


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


def varying_axes(x) -> frozenset:
  """The mesh axes over which x's value varies, as shard_map's check_vma types it (none outside
  shard_map)."""
  aval = jax.typeof(x)
  mat = getattr(aval, "mat", None)  # jax 0.10
  return frozenset(mat.varying if mat is not None else getattr(aval, "vma", ()))


def as_varying(x, axes):
  """x typed as varying over `axes` (a no-op outside shard_map, where `axes` is empty)."""
  missing = tuple(sorted(a for a in axes if a not in varying_axes(x)))
  return jax.lax.pcast(x, missing, to="varying") if missing else x


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _bcsr_spmm(out_axes, x_axes, data, x, indices, indptr, t_indices, t_indptr, t_perm):
  # The sparse kernel's output carries no varying-over-devices type inside shard_map: it is
  # re-typed as its inputs vary (out_axes), the cotangent as x varies (x_axes).
  return as_varying(_csr_matmul(data, indices, indptr, x), out_axes)


def _bcsr_fwd(out_axes, x_axes, data, x, indices, indptr, t_indices, t_indptr, t_perm):
  out = _bcsr_spmm(out_axes, x_axes, data, x, indices, indptr, t_indices, t_indptr, t_perm)
  return out, (data, t_indices, t_indptr, t_perm)


def _bcsr_bwd(out_axes, x_axes, res, g):
  data, t_indices, t_indptr, t_perm = res
  # The edge weights are fixed by the graph and the dropout mask, never learned: no cotangent.
  ct = as_varying(_csr_matmul(data[t_perm], t_indices, t_indptr, g), x_axes)
  return (None, ct, None, None, None, None, None)


_bcsr_spmm.defvjp(_bcsr_fwd, _bcsr_bwd)


def csr_spmm(data, x, indices, indptr, t_indices, t_indptr, t_perm) -> jnp.ndarray:
  """(CSR of data, indices, indptr) @ x with the CSR kernel, its gradient in x through the
  transposed matrix's side arrays (csr_arrays); inside shard_map too (a row block of a graph)."""
  args = (data, x, indices, indptr, t_indices, t_indptr, t_perm)
  out_axes = frozenset().union(*map(varying_axes, args))
  return _bcsr_spmm(out_axes, varying_axes(x), *args)


def segment_spmm(weights, x, senders, receivers, n_rows: int) -> jnp.ndarray:
  """The same product as a gather + `jax.ops.segment_sum` (jraph's message passing)."""
  messages = x[senders] * weights[:, None]
  return jax.ops.segment_sum(messages, receivers, n_rows, indices_are_sorted=True)


def aggregate(
  graph: jraph.GraphsTuple, csr: Optional[CSR] = None, backend: str = "bcsr"
) -> jnp.ndarray:
  """One propagation step: sum over each node's incoming edges of weight * sender row, i.e.
  A_w @ nodes for `nodes` (n, d) and `edges["weight"]`. segment: jraph's gather + segment_sum;
  bcsr: the CSR kernel over the precomputed side arrays."""
  x, w = graph.nodes, graph.edges["weight"]
  if backend == "segment":
    return segment_spmm(w, x, graph.senders, graph.receivers, x.shape[0])
  if backend == "bcsr":
    if csr is None:
      raise ValueError("the bcsr backend needs the graph's CSR side arrays (make_operator)")
    return csr_spmm(w, x, graph.senders, csr.indptr, csr.t_indices, csr.t_indptr, csr.t_perm)
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
  step = lambda e: aggregate(graph._replace(nodes=e), csr, backend)
  return graph._replace(nodes=layer_mean(step, graph.nodes, num_layers, perturb, include_input))


def layer_mean(
  step: Callable[[jnp.ndarray], jnp.ndarray],
  x: jnp.ndarray,
  num_layers: int,
  perturb: Optional[Callable[[int, jnp.ndarray], jnp.ndarray]] = None,
  include_input: bool = True,
) -> jnp.ndarray:
  """The LightGCN layer loop: e_(l+1) = step(e_l) (then `perturb(l, .)`), the mean of layers
  0..L (1..L without `include_input`). `step` is one product with the graph: the whole graph's,
  or a device's row block of it (graph_parallel.RowSharded)."""
  layers = [x] if include_input else []
  e = x
  for layer in range(num_layers):
    e = step(e)
    if perturb is not None:
      e = perturb(layer, e)
    layers.append(e)
  return functools.reduce(jnp.add, layers) / len(layers)


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
  """bcsr on CPU (native kernel) and on a GPU in XLA's deterministic mode (whose scatter-add makes
  segment_sum very slow: cikg_jax/runtime.py); gather + segment_sum elsewhere (atomic scatter-add,
  the fastest on a GPU, not bitwise reproducible)."""
  if jax.default_backend() == "cpu" or runtime.xla_gpu_deterministic_requested():
    return "bcsr"
  return "segment"


def resolve_backend(backend: str) -> str:
  return default_backend() if backend == "auto" else backend

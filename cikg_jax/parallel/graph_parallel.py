"""Graph parallelism (config.parallel.mode "graph" and "data_graph"): the propagation operators
and the node table split by node-row blocks over the "graph" axis of a `jax.sharding.Mesh`, the
one train step (steps.train_step) of the model with the row-sharded layout run under
`jax.shard_map`; in "data_graph" the mesh has a "data" axis too, over which each mini-batch is
split as in the pmap data parallelism (parallel.py). This module holds only the layout (what
cikgrec.Dense does on one array, done on a device's row block with collectives), the cut of the
operators and the placement; the propagation kernels, draws and losses are propagation.py's and
losses.py's.

Layout. The table's N rows are padded to Np = D * B (D devices on "graph"); device k owns rows
kB..(k+1)B-1 of the table, of its Adam moments and of every propagated layer. Each graph's edges
are cut by receiver: device k holds the edges into its rows (in the whole graph's receiver-sorted
order, padded to the longest block with zero-weight edges), with global sender ids, and their CSR
side arrays (rows: its B receivers; columns: all Np senders). No device holds the whole edge set.

One propagation layer on device k: all_gather the layer input (Np x d), multiply by its edge block,
keep its B output rows. In the backward pass the all_gather's transpose (a psum_scatter) sums
every device's cotangent of the senders' rows. The rows the losses need (the batch's, the interest
rows) are a masked local gather and a psum over "graph" (rows x d, not Np x d); InfoNCE against all
rows of a range sums each block's denominators with a psum. Random draws of a table's shape and
over the undirected pairs (dropout, SimGCL noise) are computed per element index: threefry is
counter-based, element i of a draw of any shape is a function of (key, i) (propagation.uniform_at),
so each device draws only its rows or its edges' pairs and gets the values the single-device draw
has.

Node order (config.parallel.node_order, `NodeOrder`). The row blocks cut the table in the order
of a permutation chosen once at set-up from the graph (cikg_jax/graphs/partition.py: "identity",
"balanced" edges per block, "rcm" locality, "degree") and stored with the run: table row p holds
node order[p]. Parameters, checkpoints, batches and every loss keep the node ids; only the placed
table, the operators' row ids and the layout's lookups (`NodeRows`) are in row order, so a run is
the same run in any order, up to float summation order.

Gradients: the loss is replicated over "graph" (every collective above ends in a psum) and, with a
"data" axis, psum'd over it inside the loss (steps.BatchShards; under pmap the shard gradients
are psum'd after autodiff instead). Under shard_map's `check_vma` the gradient of such a loss is
exact: the table rows' gradient arrives on the device that owns them, the replicated parameters'
gradients arrive summed (no extra psum; see docs/method.md §7 for the trap). Adam is per element, so the sharded moments update locally.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import math
import os
from typing import Dict, Optional

import flax.struct
import jax
from jax import lax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np

from cikg_jax.graphs import halo as halo_lib
from cikg_jax.graphs import partition
from cikg_jax.graphs import propagation as prop
from cikg_jax.models import cikgrec, losses
from cikg_jax.training import rundir, steps

GRAPH, DATA = "graph", "data"  # mesh axis names
PAD_PAIR = -2  # pair id of a padding edge (-1: an added self loop, never dropped)
SUPPORTED = ("cikgrec", "lightgcn")


# ---- the operator, cut by receiver blocks -----------------------------------------------------
@flax.struct.dataclass
class ShardedOperator:
  """A graph's edges cut into D receiver blocks. Every array is the D blocks' arrays concatenated
  (block k at [k * len, (k + 1) * len)), sharded over "graph": inside shard_map a device sees its
  own block. Edges: global senders, local receivers (0..B-1, sorted), weights D^-1/2 A D^-1/2
  (0 on padding), undirected pair ids (PAD_PAIR on padding). CSR side arrays of the block
  (B x Np) and of its transpose (Np x B), for the bcsr backend."""

  senders: jnp.ndarray
  receivers: Optional[jnp.ndarray]  # None where nothing reads them (edge_arrays_needed)
  weight: jnp.ndarray
  pair: Optional[jnp.ndarray]
  indptr: jnp.ndarray
  t_indptr: jnp.ndarray
  t_indices: jnp.ndarray
  t_perm: jnp.ndarray
  # halo exchange (cikg_jax/graphs/halo.py): D*H local row ids per device, what it sends each peer;
  # None: each layer all_gathers its input, and senders are global row ids
  send: Optional[jnp.ndarray]
  n_nodes: int = flax.struct.field(pytree_node=False)  # N, without padding
  n_padded: int = flax.struct.field(pytree_node=False)  # Np = D * B
  n_devices: int = flax.struct.field(pytree_node=False)
  n_pairs: int = flax.struct.field(pytree_node=False)
  n_edges: int = flax.struct.field(pytree_node=False)  # real edges of the whole graph
  halo: int = flax.struct.field(pytree_node=False, default=0)  # H; 0 with the all_gather
  # ring exchange: a block's edges in D sub-blocks by sender block (sub-block p at
  # [p * P, (p + 1) * P) of the block, P = edges_per_device / D), each with its own CSR side arrays
  # (B x B), multiplied as the owners' rows pass by (ring_spmm)
  ring: bool = flax.struct.field(pytree_node=False, default=False)
  # halo rounds: the ring's sub-blocks by sender block, each reading only the H rows of its owner
  # that the block needs (the halo plan's lists, `send`), received in D - 1 ppermute rounds
  # (halo_rounds_spmm); senders are positions in the halo buffer, as with the halo exchange
  rounds: bool = flax.struct.field(pytree_node=False, default=False)

  @property
  def weights(self) -> jnp.ndarray:
    return self.weight

  @property
  def edges_per_device(self) -> int:
    return self.senders.shape[0] // self.n_devices


def padded_rows(n_nodes: int, n_devices: int) -> int:
  return -(-n_nodes // n_devices) * n_devices


EXCHANGES = ("all_gather", "halo", "auto", "ring", "halo_rounds")


def shard_operator(
  op: prop.Operator,
  n_devices: int,
  exchange: str = "all_gather",
  position: Optional[np.ndarray] = None,
):
  """Cuts `op` (host or device arrays) into `n_devices` receiver blocks, in host memory.

  position: node i's table row (a NodeOrder's); None: the node ids. Edges keep their order
  within each receiver (a stable sort), so each row sums its messages in the same order.

  exchange: how a layer's input reaches the blocks: "all_gather" (every row to every device),
  "halo" (each block receives only the remote rows its edges read, cikg_jax/graphs/halo.py), "auto"
  (the halo where its buffer, B + D*H rows, is smaller than the Np rows of the all_gather), "ring"
  (the owners' blocks passed round the devices one at a time, `ring_spmm`: the traffic of the
  all_gather in a buffer of B rows), "halo_rounds" (each owner's halo rows for this block, one
  owner per ppermute round, `halo_rounds_spmm`: the halo's traffic in a buffer of H rows)."""
  if exchange not in EXCHANGES:
    raise ValueError(f"unknown exchange {exchange!r}; choose from {EXCHANGES}")
  g = op.graph
  senders = np.asarray(g.senders).astype(np.int32)
  receivers = np.asarray(g.receivers).astype(np.int64)
  weight = np.asarray(g.edges["weight"]).astype(np.float32)
  pair = np.asarray(g.edges["pair"]).astype(np.int32)
  if position is not None:
    senders, receivers = position[senders].astype(np.int32), position[receivers]
    by_row = np.argsort(receivers, kind="stable")
    senders, receivers, weight, pair = (a[by_row] for a in (senders, receivers, weight, pair))
  n, d = op.n_nodes, n_devices
  n_padded = padded_rows(n, d)
  b = n_padded // d
  bounds = np.searchsorted(receivers, np.arange(d + 1) * b)  # receivers are sorted
  if exchange == "ring":
    return _ring_operator(op, senders, receivers, weight, pair, bounds, d, b)
  per = max(1, int(np.max(np.diff(bounds))))
  plan = None
  if exchange != "all_gather":
    plan = halo_lib.plan([senders[bounds[k] : bounds[k + 1]] for k in range(d)], d, b)
    if exchange == "auto" and b + d * plan["halo"] >= n_padded:
      plan = None
  if exchange == "halo_rounds":
    return _rounds_operator(op, plan, receivers, weight, pair, bounds, d, b)
  n_cols = n_padded if plan is None else b + d * plan["halo"]
  fields = [
    f
    for f in ShardedOperator.__dataclass_fields__
    if f[0] != "n" and f not in ("halo", "ring", "rounds")
  ]
  out = {k: [] for k in fields if k != "send"}
  for k in range(d):
    lo, hi = bounds[k], bounds[k + 1]
    pad = per - (hi - lo)
    # Padding edges: sender 0, the last local row (receivers stay sorted), weight 0.
    block_senders = senders[lo:hi] if plan is None else plan["halo_senders"][k]
    s = np.concatenate([block_senders, np.zeros(pad, np.int32)]).astype(np.int32)
    r = np.concatenate([receivers[lo:hi] - k * b, np.full(pad, b - 1)]).astype(np.int32)
    out["senders"].append(s)
    out["receivers"].append(r)
    out["weight"].append(np.concatenate([weight[lo:hi], np.zeros(pad, np.float32)]))
    out["pair"].append(np.concatenate([pair[lo:hi], np.full(pad, PAD_PAIR, np.int32)]))
    csr = prop.csr_arrays(s, r, b, n_cols)
    for name in ("indptr", "t_indptr", "t_indices", "t_perm"):
      out[name].append(getattr(csr, name))
  return ShardedOperator(
    **{k: np.concatenate(v) for k, v in out.items()},
    send=None if plan is None else plan["send"].reshape(-1),
    n_nodes=n,
    n_padded=n_padded,
    n_devices=d,
    n_pairs=op.n_pairs,
    n_edges=len(senders),
    halo=0 if plan is None else plan["halo"],
  )


def _sub_block_arrays(subs, b: int):
  """The edge and CSR arrays of sub-blocks (first sender, senders, receivers, weights, pairs),
  each padded to the longest (sender `first`, receiver B - 1, weight 0), with the CSR side
  arrays of its B x B matrix of columns sender - first."""
  per = max(1, max(len(sub[1]) for sub in subs))
  out = {k: [] for k in ("senders", "receivers", "weight", "pair")}
  out.update({k: [] for k in ("indptr", "t_indptr", "t_indices", "t_perm")})
  for first, s, r, w, pr in subs:
    pad = per - len(s)
    s = np.concatenate([s, np.full(pad, first)]).astype(np.int32)
    r = np.concatenate([r, np.full(pad, b - 1)]).astype(np.int32)
    out["senders"].append(s)
    out["receivers"].append(r)
    out["weight"].append(np.concatenate([w, np.zeros(pad, np.float32)]))
    out["pair"].append(np.concatenate([pr, np.full(pad, PAD_PAIR, np.int32)]))
    csr = prop.csr_arrays(s - first, r, b, b)
    for name in ("indptr", "t_indptr", "t_indices", "t_perm"):
      out[name].append(getattr(csr, name))
  return {k: np.concatenate(v) for k, v in out.items()}


def _ring_operator(op, senders, receivers, weight, pair, bounds, d: int, b: int):
  """shard_operator's cut for the ring exchange: block k's edges split by sender block p, each
  sub-block padded to the longest (sender p * B, receiver B - 1, weight 0) with the CSR side arrays
  of its B x B matrix. Senders stay global ids (dropout gathers the senders' degrees)."""
  subs = []
  for k in range(d):
    s, r = senders[bounds[k] : bounds[k + 1]], receivers[bounds[k] : bounds[k + 1]] - k * b
    w, pr = weight[bounds[k] : bounds[k + 1]], pair[bounds[k] : bounds[k + 1]]
    owner = s // b
    for p in range(d):
      mine = owner == p  # a stable selection: receivers stay sorted
      subs.append((p * b, s[mine], r[mine], w[mine], pr[mine]))
  return ShardedOperator(
    **_sub_block_arrays(subs, b),
    send=None,
    n_nodes=op.n_nodes,
    n_padded=d * b,
    n_devices=d,
    n_pairs=op.n_pairs,
    n_edges=len(senders),
    ring=True,
  )


def _rounds_operator(op, plan, receivers, weight, pair, bounds, d: int, b: int):
  """shard_operator's cut for the halo rounds: block k's edges split by the owner p of their
  sender, as the ring's, each sub-block's columns the sender's place in the rows p sends k (its
  own rows: the local ids), with the CSR side arrays of a B x B matrix (a remote sub-block uses
  its first H columns). `senders` are the halo exchange's buffer positions (the dropout's degree
  exchange reads them); padding edges read column 0 with weight 0."""
  h = plan["halo"]
  subs = []
  for k in range(d):
    s = plan["halo_senders"][k].astype(np.int64)
    r = receivers[bounds[k] : bounds[k + 1]] - k * b
    w, pr = weight[bounds[k] : bounds[k + 1]], pair[bounds[k] : bounds[k + 1]]
    owner = np.where(s < b, k, (s - b) // h)
    for p in range(d):
      mine = owner == p  # a stable selection: receivers stay sorted
      first = 0 if p == k else b + p * h  # the sub-block's first buffer position
      subs.append((first, s[mine], r[mine], w[mine], pr[mine]))
  return ShardedOperator(
    **_sub_block_arrays(subs, b),
    send=plan["send"].reshape(-1),
    n_nodes=op.n_nodes,
    n_padded=d * b,
    n_devices=d,
    n_pairs=op.n_pairs,
    n_edges=int(bounds[-1]),
    halo=h,
    rounds=True,
  )


def halo_rounds_spmm(op: ShardedOperator, weights, x):
  """This block's rows of A_w @ x under the halo rounds: its own sub-block times its rows, then
  in round s = 1 .. D-1 the H rows device k + s (mod D) owns and this block reads arrive (each
  device sends device k - s the rows it needs, one `ppermute`) and are multiplied by their
  sub-block. The backward pass returns each round's A^T g for the H rows to their owner the same
  way, without keeping the received rows. The halo exchange's traffic, in a buffer of H rows
  instead of B + D*H."""
  args = (weights, x, op.senders, op.send, op.indptr, op.t_indices, op.t_indptr, op.t_perm)
  axes = frozenset().union(*map(prop.varying_axes, args))
  return _rounds(op.n_devices, op.halo, axes, prop.varying_axes(x), *args)


def _round_offsets(k, p, block: int, halo: int):
  """Buffer position of the first row owner p sends block k (0: k's own rows)."""
  return jnp.where(p == k, 0, block + p * halo)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2, 3))
def _rounds(
  n_devices, halo, axes, x_axes, data, x, senders, send, indptr, t_indices, t_indptr, t_perm
):
  d = n_devices
  k = lax.axis_index(GRAPH)
  data, senders, indptr = (a.reshape(d, -1) for a in (data, senders, indptr))
  block = x.shape[0]

  def product(p, held):
    row = lambda a: lax.dynamic_index_in_dim(a, p, keepdims=False)
    columns = row(senders) - _round_offsets(k, p, block, halo)
    return prop.as_varying(prop._csr_matmul(row(data), columns, row(indptr), held), axes)

  x = prop.as_varying(x, axes)

  def round_(s, acc):
    # every device sends device j - s its rows that j reads; this one receives from k + s
    rows = x[lax.dynamic_slice_in_dim(send, ((k - s) % d) * halo, halo)]
    return acc + product((k + s) % d, _shifted(rows, s, d, -1))

  return lax.fori_loop(1, d, round_, product(k, x))


def _shifted(x, s, d: int, sign: int):
  """x of device j sent to device j + sign * s (mod D): one static ppermute per shift, chosen by
  the loop's round s (a loop keeps one round's buffers alive, which the unrolled rounds did not)."""
  shifts = [
    functools.partial(
      lax.ppermute, axis_name=GRAPH, perm=[(j, (j + sign * t) % d) for j in range(d)]
    )
    for t in range(1, d)
  ]
  return lax.switch(s - 1, shifts, x)


def _rounds_fwd(n_devices, halo, axes, x_axes, data, x, senders, send, *csr):
  out = _rounds(n_devices, halo, axes, x_axes, data, x, senders, send, *csr)
  indptr, t_indices, t_indptr, t_perm = csr
  return out, (data, send, t_indices, t_indptr, t_perm)


def _rounds_bwd(n_devices, halo, axes, x_axes, res, g):
  d = n_devices
  k = lax.axis_index(GRAPH)
  data, send, t_indices, t_indptr, t_perm = res
  data, t_indices, t_indptr, t_perm = (
    a.reshape(d, -1) for a in (data, t_indices, t_indptr, t_perm)
  )
  g = prop.as_varying(g, axes)

  def product(p, n_cols):  # A[k, p]^T g: the cotangent of the first n_cols rows p sent here
    row = lambda a: lax.dynamic_index_in_dim(a, p, keepdims=False)
    w = row(data)[row(t_perm)]
    indptr = row(t_indptr)[: n_cols + 1]
    return prop.as_varying(prop._csr_matmul(w, row(t_indices), indptr, g), axes)

  def round_(s, acc):
    # the cotangent of the rows received in round s goes back to their owner k + s; this
    # device gets that of the rows it sent device k - s, and adds it onto them
    back = _shifted(product((k + s) % d, halo), s, d, 1)
    return acc.at[lax.dynamic_slice_in_dim(send, ((k - s) % d) * halo, halo)].add(back)

  acc = lax.fori_loop(1, d, round_, product(k, g.shape[0]))
  # The edge weights are fixed by the graph and the dropout mask, never learned: no cotangent.
  return (None, prop.as_varying(acc, x_axes), None, None, None, None, None, None)


_rounds.defvjp(_rounds_fwd, _rounds_bwd)


def ring_spmm(op: ShardedOperator, weights, x):
  """This block's rows of A_w @ x under the ring exchange: D steps, at step s the block of
  device k + s (mod D) is here, multiplied by its sub-block, then passed to device k - 1. The
  backward pass sends an accumulator of A^T g the other way round, which arrives at its owner
  after D - 1 steps. One block of B rows is in flight at a time: the all_gather's traffic, in
  memory B x d instead of Np x d (a graph without locality, where the halo is near the table)."""
  args = (weights, x, op.senders, op.indptr, op.t_indices, op.t_indptr, op.t_perm)
  axes = frozenset().union(*map(prop.varying_axes, args))
  return _ring(op.n_devices, axes, prop.varying_axes(x), *args)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _ring(n_devices, axes, x_axes, data, x, senders, indptr, t_indices, t_indptr, t_perm):
  d = n_devices
  k = lax.axis_index(GRAPH)
  data, senders, indptr = (a.reshape(d, -1) for a in (data, senders, indptr))
  block = x.shape[0]
  to_previous = [(j, (j - 1) % d) for j in range(d)]

  def product(s, held):
    p = (k + s) % d
    row = lambda a: lax.dynamic_index_in_dim(a, p, keepdims=False)
    local = row(senders) - p * block
    return prop.as_varying(prop._csr_matmul(row(data), local, row(indptr), held), axes)

  def step(s, carry):
    held, acc = carry
    held = lax.ppermute(held, GRAPH, to_previous)
    return held, acc + product(s, held)

  held = prop.as_varying(x, axes)
  _, acc = lax.fori_loop(1, d, step, (held, product(0, held)))
  return acc


def _ring_fwd(n_devices, axes, x_axes, data, x, senders, indptr, t_indices, t_indptr, t_perm):
  out = _ring(n_devices, axes, x_axes, data, x, senders, indptr, t_indices, t_indptr, t_perm)
  return out, (data, t_indices, t_indptr, t_perm)


def _ring_bwd(n_devices, axes, x_axes, res, g):
  d = n_devices
  k = lax.axis_index(GRAPH)
  data, t_indices, t_indptr, t_perm = (a.reshape(d, -1) for a in res)
  to_next = [(j, (j + 1) % d) for j in range(d)]
  g = prop.as_varying(g, axes)

  def product(s):  # A[k, t]^T g for the block t = k - 1 - s, whose accumulator is here
    t = (k - 1 - s) % d
    row = lambda a: lax.dynamic_index_in_dim(a, t, keepdims=False)
    w = row(data)[row(t_perm)]
    return prop.as_varying(prop._csr_matmul(w, row(t_indices), row(t_indptr), g), axes)

  def step(s, acc):
    return lax.ppermute(acc, GRAPH, to_next) + product(s)

  acc = lax.fori_loop(1, d, step, product(0))
  # The edge weights are fixed by the graph and the dropout mask, never learned: no cotangent.
  return (None, prop.as_varying(acc, x_axes), None, None, None, None, None)


_ring.defvjp(_ring_fwd, _ring_bwd)


@jax.custom_vjp
def _gradient_summed_here(x):
  """x; in the backward pass, the cotangent of a propagation's input is summed and stored as it
  is complete. Without the barrier XLA fuses the sums of every propagation's and gather's
  cotangent into one operation after the last of them, which keeps all of them alive at once
  (with halo exchanges, 4 (B + D H) x d and 8 B x d buffers at the peak). Values are unchanged."""
  return x


def _summed_here_fwd(x):
  return x, None


def _summed_here_bwd(_, g):
  return (lax.optimization_barrier(g),)


_gradient_summed_here.defvjp(_summed_here_fwd, _summed_here_bwd)


# ---- random draws by element index ------------------------------------------------------------
def check_random_bits() -> None:
  """The indexed draws below reproduce jax.random's threefry with `jax_threefry_partitionable`
  (the default since jax 0.5): stop clearly where another generator is configured."""
  if not jax.config.jax_threefry_partitionable:
    raise ValueError(
      "parallel.mode graph/data_graph draw dropout and noise per element, which reproduces "
      "jax.random only with jax_threefry_partitionable=True (the default)"
    )
  if jax.config.jax_default_prng_impl != "threefry2x32":
    raise ValueError("parallel.mode graph/data_graph need the threefry2x32 PRNG (the default)")


def index_2x32(row, width: int, col):
  """(hi, lo) uint32 words of row * width + col, exact past 2^32 (N x d tables are larger)."""
  if not 0 < width < 2**16:
    raise ValueError(f"row width {width} out of range")
  row, col = row.astype(jnp.uint32), col.astype(jnp.uint32)
  p1 = (row >> 16) * jnp.uint32(width)  # row = r1 * 2^16 + r0
  p0 = (row & jnp.uint32(0xFFFF)) * jnp.uint32(width)
  lo = (p1 << 16) + p0
  hi = (p1 >> 16) + (lo < p0).astype(jnp.uint32)
  lo2 = lo + col
  return hi + (lo2 < lo).astype(jnp.uint32), lo2


# ---- the row-sharded layout (cikgrec.Dense's interface inside shard_map) --------------------------
@flax.struct.dataclass
class NodeRows:
  """A node order inside shard_map: `position[i]`, the table row of node i (replicated), and
  `node[r]`, the node at row r of this device's block (a padding row: its row index, >= N)."""

  position: jnp.ndarray
  node: jnp.ndarray


@dataclasses.dataclass(frozen=True)
class RowSharded:
  """This device's block of rows of every node-table-shaped array, inside shard_map over a mesh
  with a "graph" axis of `n_devices` (cikgrec.Dense is the single-device version). `rows`: the
  node order's lookups, bound inside the step (None: row r holds node r)."""

  n_nodes: int
  n_devices: int
  rows: Optional[NodeRows] = dataclasses.field(default=None, compare=False, hash=False)

  @property
  def n_padded(self) -> int:
    return padded_rows(self.n_nodes, self.n_devices)

  @property
  def block(self) -> int:
    return self.n_padded // self.n_devices

  def table_rows(self, n_nodes: int) -> int:
    assert n_nodes == self.n_nodes, (n_nodes, self.n_nodes)
    return self.block

  def first_row(self):
    return lax.axis_index(GRAPH) * self.block

  def row_of(self, ids):
    """The table rows of node ids."""
    return ids if self.rows is None else self.rows.position[ids]

  def nodes_here(self, n_rows: int):
    """The node ids of this block's rows (padding rows: ids >= N)."""
    if self.rows is None:
      return self.first_row() + jnp.arange(n_rows)
    return self.rows.node

  def take(self, x, ids):
    """x[ids] of the whole array: each device its own rows, the rest zeros, summed."""
    local = self.row_of(ids) - self.first_row()
    mine = (local >= 0) & (local < self.block)
    rows = x[jnp.clip(local, 0, self.block - 1)]
    rows = jnp.where(mine.reshape(mine.shape + (1,) * (rows.ndim - 1)), rows, 0)
    return lax.psum(rows, GRAPH)

  def put(self, x, ids, values):
    local = self.row_of(ids) - self.first_row()
    mine = (local >= 0) & (local < self.block)
    return x.at[jnp.where(mine, local, self.block)].set(values, mode="drop")

  def uniform(self, key, x):
    rows = self.nodes_here(x.shape[0])  # a node's draws wherever its row is
    width = math.prod(x.shape[1:])
    cols = jnp.arange(width)
    hi, lo = index_2x32(rows[:, None], width, cols[None, :])
    return prop.uniform_at(prop.key_words(key), hi, lo).reshape(x.shape)

  def bernoulli(self, key, p, x):
    return self.uniform(key, x) < p

  def dropped_weights(self, op: ShardedOperator, key, rate: float):
    """prop.normalized_weights(op, prop.edge_keep_mask(op, key, rate)) on this block: the keep
    draw of each edge's pair, degrees of its receivers summed here, of its senders gathered."""
    pair = op.pair
    draw = prop.uniform_at(prop.key_words(key), jnp.zeros_like(pair), jnp.maximum(pair, 0))
    keep = draw < (1.0 - rate)
    w = jnp.where(pair == -1, True, jnp.where(pair >= 0, keep, False)).astype(jnp.float32)
    # ring: sorted within each sender sub-block only
    sorted_rows = not (op.ring or op.rounds)
    deg = jax.ops.segment_sum(w, op.receivers, self.block, indices_are_sorted=sorted_rows)
    inv_sqrt = jnp.where(deg > 0, lax.rsqrt(jnp.maximum(deg, 1e-12)), 0.0)
    return w * self.sender_rows(op, inv_sqrt)[op.senders] * inv_sqrt[op.receivers]

  def sender_rows(self, op: ShardedOperator, x):
    """The rows of a table-shaped x that op.senders index: all of them (all_gather), or this
    block's and its halo (halo exchange)."""
    if op.send is None:
      return lax.all_gather(x, GRAPH, tiled=True)
    return halo_lib.exchange(x, op.send, GRAPH)

  def spmm(self, op: ShardedOperator, weights, x_all, backend: str):
    """This block's rows of A_w @ x, given the rows op.senders index (sender_rows)."""
    if backend == "segment":
      return prop.segment_spmm(weights, x_all, op.senders, op.receivers, self.block)
    if backend == "bcsr":
      return prop.csr_spmm(
        weights, x_all, op.senders, op.indptr, op.t_indices, op.t_indptr, op.t_perm
      )
    raise ValueError(f"unknown propagation backend {backend!r}; choose from {prop.BACKENDS}")

  def propagate(self, op, x, num_layers: int, weights=None, backend="bcsr", perturb=None):
    """prop.propagate on this block: each layer gathers the sender rows of its input."""
    if not isinstance(op, ShardedOperator):
      raise ValueError("graph-parallel propagation needs a ShardedOperator (shard_graphs)")
    w = op.weight if weights is None else weights
    if op.ring or op.rounds:  # the exchange multiplies the sub-blocks as the rows arrive
      if backend != "bcsr":
        name = "ring" if op.ring else "halo_rounds"
        raise ValueError(f"parallel.exchange={name} needs model.backend=bcsr")
      spmm = ring_spmm if op.ring else halo_rounds_spmm
      step = lambda e: spmm(op, w, e)
    else:
      step = lambda e: self.spmm(op, w, self.sender_rows(op, e), backend)
    return prop.layer_mean(step, _gradient_summed_here(x), num_layers, perturb)

  def info_nce(
    self, anchors, table, lo: int, hi: Optional[int], positive, mask, tau, count=None, chunk=0
  ):
    """losses.info_nce against rows lo:hi of the whole table: each block's share of every
    anchor's denominator, psum'd (the same constant shift 1/tau); over chunks of `chunk` rows of
    the block when it is positive (memory batch x chunk, not batch x block)."""
    hi = self.n_nodes if hi is None else hi
    rows = self.nodes_here(table.shape[0])
    candidate = (rows >= lo) & (rows < hi)
    shift = 1.0 / tau
    if chunk:
      # typed as varying like the block (pcast: its transpose sums the anchors' cotangent
      # shares over the devices), as the custom VJP's cotangents are
      axes = prop.varying_axes(table) | prop.varying_axes(anchors)
      scaled = prop.as_varying(anchors * (1.0 / tau), axes)
      weights = prop.as_varying(candidate.astype(table.dtype), axes)
      total = losses.chunked_exp_sum(
        scaled, prop.as_varying(table, axes), weights, shift, int(chunk)
      )
    else:
      logits = (anchors * (1.0 / tau)) @ table.T
      total = jnp.sum(jnp.where(candidate[None, :], jnp.exp(logits - shift), 0.0), axis=1)
    positives = self.take(table, lo + positive)
    return losses.info_nce_from_sums(lax.psum(total, GRAPH), anchors, positives, mask, tau, count)


# ---- the mesh, placement and the steps --------------------------------------------------------
def mesh_shape(mode: str, n_devices: int, data_devices: int = 0) -> Dict[str, int]:
  """{axis: size}: "graph" over all devices, or "data" x "graph" (data_devices = 0: the largest
  divisor of n_devices not above its square root)."""
  if mode == "graph":
    return {GRAPH: n_devices}
  if mode != "data_graph":
    raise ValueError(f"no mesh for parallel.mode {mode!r}")
  if data_devices <= 0:
    data_devices = max(
      k for k in range(1, n_devices + 1) if n_devices % k == 0 and k * k <= n_devices
    )
  if n_devices % data_devices:
    raise ValueError(
      f"parallel.data_devices={data_devices} does not divide parallel.num_devices={n_devices}"
    )
  return {DATA: data_devices, GRAPH: n_devices // data_devices}


def make_mesh(shape: Dict[str, int], devices=None) -> Mesh:
  """A mesh of `shape` over `devices` (default: this process's devices; with several processes,
  the same number of each process's devices, process by process)."""
  n = math.prod(shape.values())
  if devices is None:
    if jax.process_count() == 1:
      devices = jax.local_devices()
    else:
      per = n // jax.process_count()
      by_process = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
      devices = [
        d
        for p in range(jax.process_count())
        for d in [x for x in by_process if x.process_index == p][:per]
      ]
  return Mesh(np.asarray(devices[:n]).reshape(tuple(shape.values())), tuple(shape))


def put_global(x, sharding: NamedSharding):
  """Host array `x`, the same on every process, as a global array of `sharding`: each process
  places only its devices' parts (one process: jax.device_put)."""
  x = np.asarray(x)
  if jax.process_count() == 1:
    return jax.device_put(x, sharding)
  return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


def to_host(x) -> np.ndarray:
  """A global array's whole value as a host array on every process."""
  if jax.process_count() == 1 or x.is_fully_addressable:
    return np.asarray(jax.device_get(x))
  if x.is_fully_replicated:
    return np.asarray(x.addressable_data(0))
  from jax.experimental import multihost_utils

  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def _is_table(path) -> bool:
  """The node table and the optimizer moments shaped like it (params/node_embedding/embedding,
  opt_state/.../mu/node_embedding/embedding, ...)."""
  keys = [getattr(k, "key", getattr(k, "name", None)) for k in path]
  return keys[-2:] == ["node_embedding", "embedding"]


def check_supported(net, graphs) -> None:
  if type(net) not in (cikgrec.LightGCN, cikgrec.CIKGRec):
    raise ValueError(
      f"parallel.mode graph/data_graph support {SUPPORTED}, not {type(net).__name__}; run it "
      "with parallel.mode=data"
    )
  if "views" in graphs.ops:
    raise ValueError(
      "the stacked contrastive views (cikgrec.with_stacked_views) run only unsharded"
    )


def edge_arrays_needed(net, ops) -> set:
  """ids of the operators whose per-edge receivers and pair ids the step reads: those it drops
  edges of (dropped_weights: the main graph with edge dropout, the reconstruction's graph), and
  every one with the segment backend. The others are placed without them: on the bcsr backend
  the three contrastive views' products read only senders, weights and the CSR side arrays,
  which leaves 8 bytes per edge off each device."""
  if net.backend == "segment":
    return {id(op) for op in ops.values()}
  names = []
  if getattr(net, "edge_dropout", 0) > 0:
    names.append("cikg")
  reconstruction = getattr(net, "reconstruction", None)
  if reconstruction is not None and reconstruction.weight > 0 and reconstruction.edge_drop > 0:
    names.append("cikg_with_loops")
  return {id(ops[n]) for n in names if n in ops}


def largest_operator(ops) -> Optional[str]:
  """The name of the host operator with the most edges (the one a node order is chosen from and
  reported on); None where every operator is already cut."""
  host = {k: op for k, op in ops.items() if not isinstance(op, ShardedOperator)}
  return max(host, key=lambda k: int(np.shape(host[k].graph.senders)[0])) if host else None


@dataclasses.dataclass(frozen=True)
class NodeOrder:
  """The node order a graph-mode run places its table in: `order[p]` is the node at table row p
  (partition.node_order's permutation, of the graph's largest operator, for `n_blocks` blocks).
  Chosen once at set-up and stored with the run (`save`, `load`): a resumed run uses the stored
  order, whatever the library would choose now."""

  method: str
  n_blocks: int
  order: np.ndarray

  FILE = "node_order.npz"

  @classmethod
  def choose(cls, graphs: cikgrec.Graphs, method: str, n_blocks: int) -> "NodeOrder":
    name = largest_operator(graphs.ops)
    if method == "identity" or name is None:
      return cls(method, n_blocks, np.arange(graphs.n_nodes, dtype=np.int64))
    largest = graphs.ops[name]
    g = largest.graph
    order = partition.node_order(
      np.asarray(g.senders), np.asarray(g.receivers), largest.n_nodes, method, n_blocks
    )
    return cls(method, n_blocks, order)

  @property
  def is_identity(self) -> bool:
    return bool(np.array_equal(self.order, np.arange(len(self.order))))

  @property
  def position(self) -> np.ndarray:
    """position[i]: the table row of node i."""
    position = np.empty_like(self.order)
    position[self.order] = np.arange(len(self.order))
    return position

  def save(self, path: str) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, method=self.method, n_blocks=self.n_blocks, order=self.order)
    rundir.write_atomic(path, buffer.getvalue())

  @classmethod
  def load(cls, path: str, n_nodes: int) -> "NodeOrder":
    try:
      with np.load(path) as z:
        method, n_blocks, order = str(z["method"]), int(z["n_blocks"]), z["order"]
    except (OSError, ValueError, KeyError) as e:
      raise ValueError(f"{path}: not a node order file ({e})") from e
    if not np.array_equal(np.sort(order), np.arange(n_nodes)):
      raise ValueError(
        f"{path}: holds an order of {len(order)} nodes that is not a permutation of this "
        f"graph's {n_nodes} nodes; the run directory belongs to other data"
      )
    return cls(method, n_blocks, order.astype(np.int64))

  @classmethod
  def for_run(cls, workdir, graphs, method: str, n_blocks: int, write: bool) -> "NodeOrder":
    """The run's stored order, or (a new run) the one chosen now, stored when `write`."""
    path = os.path.join(workdir, cls.FILE) if workdir else None
    if path and os.path.exists(path):
      stored = cls.load(path, graphs.n_nodes)
      if stored.method != method:
        raise ValueError(
          f"{path}: the run was placed in node order {stored.method!r}, the config asks for "
          f"{method!r}; set parallel.node_order={stored.method} or use another workdir"
        )
      return stored
    chosen = cls.choose(graphs, method, n_blocks)
    if path and write and method != "identity":
      chosen.save(path)
    return chosen


class _RowsBound:
  """A jitted step called with the node rows appended; `_cache_size` as the jitted function's
  (the loop counts compilations)."""

  def __init__(self, jitted, rows):
    self.jitted, self.rows = jitted, rows

  def __call__(self, *args):
    return self.jitted(*args, self.rows)

  def _cache_size(self):
    return self.jitted._cache_size()


class GraphParallel:
  """A model's sharded graphs, placement of its state and its steps on a "graph" or
  "data" x "graph" mesh (module docstring). `node_order`: a NodeOrder, or the name of one to
  choose now."""

  def __init__(
    self,
    net,
    graphs: cikgrec.Graphs,
    mesh: Mesh,
    exchange: str = "all_gather",
    node_order="identity",
  ):
    check_supported(net, graphs)
    check_random_bits()
    self.net, self.mesh, self.exchange = net, mesh, exchange
    self.data = DATA in mesh.axis_names
    self.n_graph = mesh.shape[GRAPH]
    self.n_data = mesh.shape[DATA] if self.data else 1
    if isinstance(node_order, str):
      node_order = NodeOrder.choose(graphs, node_order, self.n_graph)
    self.node_order = node_order
    # None where rows hold the nodes in id order: the step is then the one without lookups
    self.order = None if node_order.is_identity else node_order.order
    self.position = None if self.order is None else node_order.position
    self.layout = RowSharded(net.n_nodes, self.n_graph)
    self.local = net.clone(layout=self.layout)
    self.node_rows = None if self.order is None else self._place_node_rows()
    # the batch split over "data": the loss summed inside autodiff (steps.BatchShards)
    self.shards = steps.BatchShards(DATA, reduce_in_loss=True) if self.data else None
    self.host_graphs = graphs
    self.graphs = self._place_graphs(graphs)
    self.graph_specs = graphs_specs(self.graphs)

  # placement
  def sharding(self, spec) -> NamedSharding:
    return NamedSharding(self.mesh, spec)

  def _place_graphs(self, graphs: cikgrec.Graphs) -> cikgrec.Graphs:
    """Cuts and places every operator; ShardedOperators (placed, or abstract ones of
    jax.ShapeDtypeStruct for compiling only, experiments/graph_memory.py) are kept as they are."""
    built, ops = {}, {}
    needed = edge_arrays_needed(self.net, graphs.ops)
    for name, op in graphs.ops.items():  # aliased graphs share one operator, as in make_graphs
      if isinstance(op, ShardedOperator):
        built[id(op)] = op
      elif id(op) not in built:
        sharded = shard_operator(op, self.n_graph, self.exchange, self.position)
        if id(op) not in needed:
          sharded = sharded.replace(receivers=None, pair=None)
        built[id(op)] = jax.tree_util.tree_map(
          lambda a: put_global(a, self.sharding(P(GRAPH))), sharded
        )
      ops[name] = built[id(op)]
    rows = graphs.interest_rows
    if not isinstance(rows, jax.ShapeDtypeStruct):
      rows = put_global(rows, self.sharding(P()))
    return graphs.replace(ops=ops, interest_rows=rows)

  def partition_report(self) -> Dict:
    """The row blocks of the largest graph in this node order: nodes, edges, halo (the distinct
    remote senders a block reads) and padding per block (partition.block_stats), and the halo
    each placed operator pads its exchange to (0: it all_gathers)."""
    name = largest_operator(self.host_graphs.ops)
    out = {
      "node_order": self.node_order.method,
      "devices": self.n_graph,
      "nodes": self.net.n_nodes,
      "exchange_halo": {k: int(op.halo) for k, op in self.graphs.ops.items()},
    }
    if name is None:
      return out
    g = self.host_graphs.ops[name].graph
    bounds = partition.equal_row_bounds(self.net.n_nodes, self.n_graph)
    stats = partition.block_stats(
      np.asarray(g.senders), np.asarray(g.receivers), self.node_order.order, bounds
    )
    return out | {"operator": name, "blocks": stats}

  def _place_node_rows(self) -> NodeRows:
    n_padded = self.layout.n_padded
    node = np.arange(n_padded, dtype=np.int32)
    node[: len(self.order)] = self.order
    return NodeRows(
      position=put_global(self.position.astype(np.int32), self.sharding(P())),
      node=put_global(node, self._table_sharding()),
    )

  def _bound(self, rows):
    """The row-sharded model with the node order's lookups (traced arrays) bound."""
    if rows is None:
      return self.local
    return self.local.clone(layout=dataclasses.replace(self.layout, rows=rows))

  def _with_rows(self, fn, in_specs, out_specs, donate=(0,)):
    """jit(shard_map(fn)) called without the node rows: fn(*args, rows) gets them bound, placed
    once (no rows in id order: fn(*args, None), the program without lookups). `donate`: the
    donated arguments (default the state)."""
    if self.node_rows is None:
      mapped = jax.shard_map(
        lambda *a: fn(*a, None), mesh=self.mesh, in_specs=in_specs, out_specs=out_specs
      )
      return jax.jit(mapped, donate_argnums=donate)
    rows_specs = NodeRows(position=P(), node=P(GRAPH))
    mapped = jax.shard_map(
      fn, mesh=self.mesh, in_specs=in_specs + (rows_specs,), out_specs=out_specs
    )
    return _RowsBound(jax.jit(mapped, donate_argnums=donate), self.node_rows)

  def specs(self, tree):
    """P("graph") for the table-shaped leaves, P() (replicated) for the rest."""
    return jax.tree_util.tree_map_with_path(lambda p, _: P(GRAPH) if _is_table(p) else P(), tree)

  def _table_sharding(self) -> NamedSharding:
    # On a "graph" axis of size 1 jit returns P("graph") outputs as P(): place the state so, or
    # the donated state would come back with another sharding and the step compile twice.
    return self.sharding(P(GRAPH) if self.n_graph > 1 else P())

  def place(self, tree):
    """Host state (or params) -> the mesh: table leaves in row order, padded to Np rows and
    split by rows."""

    def put(path, x):
      x = np.asarray(x)
      if _is_table(path):
        if self.order is not None:
          x = x[self.order]
        x = np.pad(x, [(0, self.layout.n_padded - x.shape[0])] + [(0, 0)] * (x.ndim - 1))
        return put_global(x, self._table_sharding())
      return put_global(x, self.sharding(P()))

    return jax.tree_util.tree_map_with_path(put, tree)

  def abstract_placed(self, template):
    """`place`'s result as jax.ShapeDtypeStructs (shapes, dtypes, shardings) of a template."""

    def put(path, x):
      if _is_table(path):
        shape = (self.layout.n_padded,) + tuple(x.shape[1:])
        return jax.ShapeDtypeStruct(shape, x.dtype, sharding=self._table_sharding())
      return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=self.sharding(P()))

    return jax.tree_util.tree_map_with_path(put, template)

  def host_view(self, tree):
    """The mesh's state -> host (numpy) arrays of the single-device shapes."""

    def get(path, x):
      x = to_host(x)
      if not _is_table(path):
        return x
      x = x[: self.net.n_nodes]
      if self.order is not None:
        x = x[self.position]  # node i's row
      return x

    return jax.tree_util.tree_map_with_path(get, tree)

  def shard_batch(self, batch):
    spec = P(DATA) if self.data else P()
    for v in batch.values():
      if self.data and np.shape(v)[0] % self.n_data:
        raise ValueError(
          f"batch of {np.shape(v)[0]} rows does not split over {self.n_data} data devices; "
          "choose a batch size divisible by parallel.data_devices"
        )
    return {k: put_global(v, self.sharding(spec)) for k, v in batch.items()}

  def _batch_spec(self):
    return P(DATA) if self.data else P()

  # steps: the one train and TransE step (steps.py) of the row-sharded model under shard_map
  def make_train_step(self, tx, mask_rate, state_template):
    """steps.train_step under shard_map: (state, batch, key, graphs) -> (state, terms), the
    state and graphs as placed here (`place`, `self.graphs`)."""
    state_specs = self.specs(state_template)

    def step(state, batch, key, graphs, rows):
      return steps.make_train_step(self._bound(rows), tx, mask_rate, self.shards)(
        state, batch, key, graphs
      )

    return self._with_rows(
      step, (state_specs, self._batch_spec(), P(), self.graph_specs), (state_specs, P())
    )

  def make_split_train_step(self, tx, mask_rate, state_template):
    """steps.split_train_step under shard_map: a program per loss part (its gradient added into
    the donated accumulator, in the parameters' layout) and one for the update, so that the
    step's peak memory is the largest part's (config.train.split_step)."""
    state_specs = self.specs(state_template)
    grad_specs = self.specs(state_template.params)
    step_specs = (state_specs, self._batch_spec(), P(), self.graph_specs)

    def part_program(part, first):
      def fn(state, batch, key, graphs, *rest):
        acc, rows = (None, rest[0]) if first else rest
        return steps.gradient_part_step(
          self._bound(rows), mask_rate, self.shards, part, state, batch, key, graphs, acc
        )

      in_specs = step_specs if first else step_specs + (grad_specs,)
      return self._with_rows(fn, in_specs, (grad_specs, P()), donate=() if first else (4,))

    def update(state, grads, rows):
      del rows
      return steps.apply_gradients(tx, state, grads)

    parts = [part_program(p, i == 0) for i, p in enumerate(steps.loss_parts(self.net))]
    return steps.split_train_step(
      parts, self._with_rows(update, (state_specs, grad_specs), state_specs)
    )

  def make_kge_step(self, kge_tx, state_template):
    """steps.kge_step under shard_map; the triple batch split over "data"."""
    state_specs = self.specs(state_template)

    def step(state, batch, rows):
      return steps.make_kge_step(self._bound(rows), kge_tx, self.shards)(state, batch)

    return self._with_rows(step, (state_specs, self._batch_spec()), (state_specs, P()))

  def make_embed_fn(self):
    """(host params, placed graphs) -> (users, items): the propagated table computed on the mesh
    (each device its rows), as steps.make_embed_fn computes it on one device."""
    local, nu, ni = self.local, self.net.n_users, self.net.n_items
    position = None if self.position is None else jnp.asarray(self.position, jnp.int32)

    @jax.jit
    def propagated(params, graphs, position):
      out = jax.shard_map(
        lambda p, g: local.apply({"params": p}, g, method="propagated"),
        mesh=self.mesh,
        in_specs=(self.specs(params), self.graph_specs),
        out_specs=P(GRAPH),
      )(params, graphs)
      return out if position is None else out[position]  # node i's row, in id order

    def embed(params, graphs):
      out = propagated(self.place(params), graphs, position)
      if jax.process_count() > 1:  # every process evaluates the whole table, as in mode "data"
        out = to_host(out)
      return out[:nu], out[nu : nu + ni]

    return embed


def graphs_specs(graphs: cikgrec.Graphs):
  return graphs.replace(
    ops={k: jax.tree_util.tree_map(lambda _: P(GRAPH), op) for k, op in graphs.ops.items()},
    interest_rows=P(),
  )


def state_template(net, tx, kge_tx, use_kge: bool):
  """The train state's structure and shapes (no arrays), for the shard_map specs."""
  return jax.eval_shape(
    lambda k: steps.create_train_state(k, net, tx, kge_tx, use_kge), jax.random.PRNGKey(0)
  )

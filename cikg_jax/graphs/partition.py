"""Node orders and row blocks for the graph-parallel modes: which device owns which node rows.

The graph modes give each device one block of node rows and the edges those rows receive. Two
things decide what a block costs: its edges (the work of its sparse product, about E/D when the
blocks are balanced) and its halo, the distinct sender rows its edges read that other devices own
(what an exchange of only the needed rows sends per layer). A node order that keeps neighbours
together shrinks the halo; cutting the order where the cumulative in-degree crosses multiples of
E/D balances the edges.

  order = node_order(senders, receivers, n, "rcm")        # a permutation of the node ids
  bounds = edge_balanced_bounds(order, receivers, n, 8)   # 9 cut points into `order`
  stats = block_stats(senders, receivers, order, bounds)  # edges, halo, padding per block

Orders: "identity" (ids as given), "degree" (descending degree: the hubs first), "rcm" (reverse
Cuthill-McKee on the symmetrised graph, scipy's: a bandwidth-reducing BFS order, so most edges
join rows of one block or of its neighbours), "balanced" (for `n_blocks` blocks of equal rows, as
the graph modes cut the table: the nodes dealt by descending in-degree, each to the block with the
fewest edges so far that has room, so every block receives about E/D edges). All are
deterministic. The graph modes take one as `parallel.node_order` (graph_parallel.NodeOrder).
"""

from __future__ import annotations

from typing import Dict, List

import numpy as np

ORDERS = ("identity", "degree", "rcm", "balanced")


def node_order(
  senders: np.ndarray, receivers: np.ndarray, n: int, method: str, n_blocks: int = 0
) -> np.ndarray:
  """A permutation of range(n): order[k] is the node placed at position k. `n_blocks`: the
  equal-row blocks "balanced" balances (the others ignore it)."""
  if method not in ORDERS:
    raise ValueError(f"unknown node order {method!r}; choose from {ORDERS}")
  senders, receivers = np.asarray(senders, np.int64), np.asarray(receivers, np.int64)
  if method == "identity":
    return np.arange(n, dtype=np.int64)
  if method == "balanced":
    if n_blocks < 1:
      raise ValueError(f'node order "balanced" needs n_blocks >= 1, got {n_blocks}')
    return _balanced_order(np.bincount(receivers, minlength=n), n_blocks)
  degree = np.bincount(receivers, minlength=n) + np.bincount(senders, minlength=n)
  if method == "degree":
    return np.argsort(-degree, kind="stable").astype(np.int64)
  import scipy.sparse as sp
  from scipy.sparse import csgraph

  a = sp.coo_matrix((np.ones(len(senders), np.int8), (receivers, senders)), shape=(n, n)).tocsr()
  sym = (a + a.T).tocsr()
  return np.asarray(csgraph.reverse_cuthill_mckee(sym, symmetric_mode=True), np.int64)


def _balanced_order(in_degree: np.ndarray, n_blocks: int) -> np.ndarray:
  """Greedy largest-first assignment of nodes to the equal_row_bounds blocks (each block's
  capacity its rows), then the blocks' nodes in ascending id order, block after block."""
  import heapq

  n = len(in_degree)
  capacity = np.diff(equal_row_bounds(n, n_blocks))
  heap = [(0, k) for k in range(n_blocks) if capacity[k] > 0]
  heapq.heapify(heap)
  block = np.empty(n, np.int64)
  left = capacity.copy()
  for node in np.argsort(-in_degree, kind="stable"):
    edges, k = heapq.heappop(heap)
    block[node] = k
    left[k] -= 1
    if left[k] > 0:
      heapq.heappush(heap, (edges + int(in_degree[node]), k))
  return np.lexsort((np.arange(n), block)).astype(np.int64)


def edge_balanced_bounds(
  order: np.ndarray, receivers: np.ndarray, n: int, n_blocks: int
) -> np.ndarray:
  """n_blocks + 1 cut points into `order` (0 ... n) such that each block of consecutive positions
  receives about len(receivers) / n_blocks edges; every block keeps at least one node while there
  are nodes enough."""
  if n_blocks < 1:
    raise ValueError(f"n_blocks must be at least 1, got {n_blocks}")
  in_degree = np.bincount(np.asarray(receivers, np.int64), minlength=n)[order]
  cumulative = np.concatenate([[0], np.cumsum(in_degree)])
  targets = np.arange(1, n_blocks) * (cumulative[-1] / n_blocks)
  cuts = np.searchsorted(cumulative, targets, side="left")
  bounds = np.concatenate([[0], cuts, [n]]).astype(np.int64)
  for k in range(1, n_blocks):  # strictly increasing where possible: no empty block
    bounds[k] = min(max(bounds[k], bounds[k - 1] + 1), n - (n_blocks - k))
  return np.clip(bounds, 0, n)


def equal_row_bounds(n: int, n_blocks: int) -> np.ndarray:
  """Blocks of ceil(n / n_blocks) positions, as graph_parallel's row-sharded table cuts them."""
  rows = -(-n // n_blocks)
  return np.minimum(np.arange(n_blocks + 1) * rows, n).astype(np.int64)


def block_of(order: np.ndarray, bounds: np.ndarray) -> np.ndarray:
  """The block owning each node id."""
  position = np.empty(len(order), np.int64)
  position[order] = np.arange(len(order))
  return np.searchsorted(bounds, position, side="right") - 1


def block_stats(
  senders: np.ndarray, receivers: np.ndarray, order: np.ndarray, bounds: np.ndarray
) -> Dict[str, List[int]]:
  """Per block: its nodes, the edges it receives, its halo (distinct senders of those edges that
  another block owns) and its padding (rows up to the largest block, which a fixed-shape layout
  allocates on every device); with totals."""
  owner = block_of(order, bounds)
  n_blocks = len(bounds) - 1
  senders, receivers = np.asarray(senders, np.int64), np.asarray(receivers, np.int64)
  dest = owner[receivers]
  nodes = np.diff(bounds).astype(np.int64)
  edges = np.bincount(dest, minlength=n_blocks)
  remote = owner[senders] != dest
  pairs = np.unique(dest[remote] * (len(order) + 1) + senders[remote])
  halo = np.bincount(pairs // (len(order) + 1), minlength=n_blocks)
  # per (receiving block, owning block): what the halo exchange pads every peer's buffer to
  peer = np.bincount(
    (pairs // (len(order) + 1)) * n_blocks + owner[pairs % (len(order) + 1)],
    minlength=n_blocks * n_blocks,
  )
  return {
    "nodes": nodes.tolist(),
    "edges": edges.tolist(),
    "halo": halo.tolist(),
    "padding": (nodes.max() - nodes).tolist(),
    "max_edges": int(edges.max()),
    "edge_imbalance": float(edges.max() / max(edges.mean(), 1e-12)),
    "halo_total": int(halo.sum()),
    "halo_max": int(halo.max()),
    "halo_per_peer_max": int(peer.max()),
  }

"""Node orders and row blocks (cikg_jax/graphs/partition.py) against brute-force counts."""

import numpy as np
import pytest

from cikg_jax.graphs import partition


def _brute_stats(senders, receivers, owner, n_blocks):
  edges = [0] * n_blocks
  halo = [set() for _ in range(n_blocks)]
  for s, r in zip(senders, receivers):
    edges[owner[r]] += 1
    if owner[s] != owner[r]:
      halo[owner[r]].add(s)
  per_peer = max(sum(owner[s] == k for s in h) for h in halo for k in range(n_blocks))
  return edges, [len(h) for h in halo], per_peer


def _two_communities(rng, n=200, inner=1500, across=20):
  """Two dense halves joined by a few edges, node ids shuffled so that the identity order mixes
  them: a locality-aware order finds the halves again."""
  half = n // 2
  a = rng.integers(0, half, size=(inner, 2))
  b = rng.integers(half, n, size=(inner, 2))
  c = np.stack([rng.integers(0, half, across), rng.integers(half, n, across)], 1)
  pairs = np.concatenate([a, b, c])
  pairs = pairs[pairs[:, 0] != pairs[:, 1]]
  relabel = rng.permutation(n)
  s, r = relabel[pairs[:, 0]], relabel[pairs[:, 1]]
  return np.concatenate([s, r]), np.concatenate([r, s]), n  # both directions


def test_block_stats_match_brute_force():
  rng = np.random.default_rng(0)
  senders, receivers, n = _two_communities(rng)
  for method in partition.ORDERS:
    order = partition.node_order(senders, receivers, n, method, n_blocks=4)
    assert sorted(order.tolist()) == list(range(n))
    for bounds in (
      partition.equal_row_bounds(n, 4),
      partition.edge_balanced_bounds(order, receivers, n, 4),
    ):
      stats = partition.block_stats(senders, receivers, order, bounds)
      owner = partition.block_of(order, bounds)
      edges, halo, per_peer = _brute_stats(senders, receivers, owner, 4)
      assert stats["edges"] == edges and stats["halo"] == halo
      assert stats["halo_per_peer_max"] == per_peer
      assert sum(stats["nodes"]) == n and sum(stats["edges"]) == len(receivers)
      assert stats["padding"] == [max(stats["nodes"]) - k for k in stats["nodes"]]


def test_edge_balanced_bounds_balance_a_skewed_graph():
  """A star plus a ring: equal row blocks put the hub's edges on one device; the edge-balanced
  cut gives every block about E / D received edges."""
  n = 400
  ring = np.arange(n)
  senders = np.concatenate([np.arange(1, n), ring])
  receivers = np.concatenate([np.zeros(n - 1, int), (ring + 1) % n])
  order = partition.node_order(senders, receivers, n, "identity")
  equal = partition.block_stats(senders, receivers, order, partition.equal_row_bounds(n, 4))
  bounds = partition.edge_balanced_bounds(order, receivers, n, 4)
  balanced = partition.block_stats(senders, receivers, order, bounds)
  assert equal["edge_imbalance"] > 2.4
  assert balanced["edge_imbalance"] < equal["edge_imbalance"]
  assert all(k > 0 for k in balanced["nodes"])
  assert list(bounds) == sorted(bounds) and bounds[0] == 0 and bounds[-1] == n


def test_rcm_keeps_neighbours_together():
  """A 30 x 30 grid with shuffled ids: in id order nearly every neighbour is remote; RCM's
  bandwidth-reducing order leaves each block a halo of about one grid row per neighbour block."""
  side = 30
  rng = np.random.default_rng(1)
  ids = rng.permutation(side * side).reshape(side, side)
  right = np.stack([ids[:, :-1].ravel(), ids[:, 1:].ravel()], 1)
  down = np.stack([ids[:-1, :].ravel(), ids[1:, :].ravel()], 1)
  pairs = np.concatenate([right, down])
  senders = np.concatenate([pairs[:, 0], pairs[:, 1]])
  receivers = np.concatenate([pairs[:, 1], pairs[:, 0]])
  n = side * side
  halo = {}
  for method in ("identity", "rcm"):
    order = partition.node_order(senders, receivers, n, method)
    stats = partition.block_stats(
      senders, receivers, order, partition.edge_balanced_bounds(order, receivers, n, 4)
    )
    halo[method] = stats["halo_total"]
  assert halo["rcm"] < 0.2 * halo["identity"]
  assert halo["rcm"] <= 6 * 2 * side  # 3 cuts, each seen from both sides, ~1-2 rows wide


def test_orders_are_deterministic_and_checked():
  rng = np.random.default_rng(2)
  senders, receivers, n = _two_communities(rng, n=60, inner=200, across=5)
  for method in partition.ORDERS:
    a = partition.node_order(senders, receivers, n, method, n_blocks=3)
    b = partition.node_order(senders, receivers, n, method, n_blocks=3)
    np.testing.assert_array_equal(a, b)
  with pytest.raises(ValueError, match="unknown node order 'metis'"):
    partition.node_order(senders, receivers, n, "metis")
  with pytest.raises(ValueError, match="n_blocks must be at least 1"):
    partition.edge_balanced_bounds(np.arange(n), receivers, n, 0)
  with pytest.raises(ValueError, match='"balanced" needs n_blocks >= 1'):
    partition.node_order(senders, receivers, n, "balanced")


def test_balanced_order_balances_equal_row_blocks():
  """The graph modes cut the table into equal row blocks: the "balanced" order fills them so
  that each receives about E / D edges (three stars plus a ring: in id order the hubs' block gets
  1.9 times the mean), and each block keeps exactly its equal_row_bounds rows."""
  n, d = 403, 4
  ring = np.arange(n)
  hubs = np.repeat([0, 1, 2], 60)
  senders = np.concatenate([np.arange(3, 183), ring])
  receivers = np.concatenate([hubs, (ring + 1) % n])
  bounds = partition.equal_row_bounds(n, d)
  stats = {}
  for method in ("identity", "balanced"):
    order = partition.node_order(senders, receivers, n, method, n_blocks=d)
    stats[method] = partition.block_stats(senders, receivers, order, bounds)
  assert stats["identity"]["edge_imbalance"] > 1.9
  assert stats["balanced"]["nodes"] == np.diff(bounds).tolist()
  # the best equal-row blocks can do: one hub (61 edges) and 100 ring nodes (1 each) in three
  # blocks of 101 rows, 100 ring nodes in the last: 161 edges at most (the mean is 145.75)
  assert sorted(stats["balanced"]["edges"]) == [100, 161, 161, 161]

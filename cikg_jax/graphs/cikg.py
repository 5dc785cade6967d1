"""The Collaborative Interest Knowledge Graph and its contrastive views as `jraph.GraphsTuple`s.

All graphs are homogeneous and undirected over the one node table
`[users | items = first entities | other entities | interest nodes]`: every undirected pair becomes
two directed edges, duplicates are removed, relation types are dropped (docs/method.md §1). Edges are
sorted by receiver so that the same arrays serve a CSR matrix and a segment_sum. Each directed edge
carries the id of its undirected pair, so edge dropout can drop both directions with one coin.
"""

from __future__ import annotations

import logging
from typing import Dict, Optional

import jraph
import numpy as np

from cikg_jax.data.dataset import Dataset

log = logging.getLogger(__name__)

VIEW_MODES = ("paper", "release")


# ---- undirected edge sets (canonical (min, max) pairs, no self loops) ------------------------
def user_item_pairs(ds: Dataset) -> np.ndarray:
  return ds.train + np.array([0, ds.item_offset])


def kg_pairs(ds: Dataset) -> np.ndarray:
  """KG triples plus their inverses; relations are not used in propagation."""
  return ds.kg[:, [0, 2]] + ds.item_offset


def user_interest_pairs(ds: Dataset) -> np.ndarray:
  return ds.user_interest + np.array([0, ds.n_users])


def _canonical(*pair_sets: np.ndarray) -> np.ndarray:
  pairs = np.concatenate([p.reshape(-1, 2) for p in pair_sets], axis=0).astype(np.int64)
  return np.unique(np.sort(pairs, axis=1), axis=0)


def make_graph(
  n_nodes: int, pairs: np.ndarray, self_loop_nodes: Optional[np.ndarray] = None
) -> jraph.GraphsTuple:
  """Undirected pairs (+ self loops on `self_loop_nodes`) -> a directed GraphsTuple sorted by
  receiver. `edges['pair']` is the undirected pair id (added self loops: -1, never dropped)."""
  pairs = _canonical(pairs)
  n_pairs = len(pairs)
  # A data self loop (a KG triple `e r e`; dbbook2014 has 17) is one directed edge, like the
  # release's; per-view self loops come on top of it.
  back = pairs[:, 0] != pairs[:, 1]
  senders = np.concatenate([pairs[:, 0], pairs[back, 1]])
  receivers = np.concatenate([pairs[:, 1], pairs[back, 0]])
  pair_id = np.concatenate([np.arange(n_pairs), np.arange(n_pairs)[back]])
  if self_loop_nodes is not None and len(self_loop_nodes):
    loops = np.unique(np.asarray(self_loop_nodes, dtype=np.int64))
    senders = np.concatenate([senders, loops])
    receivers = np.concatenate([receivers, loops])
    pair_id = np.concatenate([pair_id, -np.ones(len(loops), np.int64)])
  order = np.lexsort((senders, receivers))
  return jraph.GraphsTuple(
    nodes=None,
    globals=None,
    senders=senders[order].astype(np.int32),
    receivers=receivers[order].astype(np.int32),
    edges={"pair": pair_id[order].astype(np.int32)},
    n_node=np.array([n_nodes], np.int32),
    n_edge=np.array([len(senders)], np.int32),
  )


def num_self_loops(graph: jraph.GraphsTuple) -> int:
  return int((np.asarray(graph.edges["pair"]) < 0).sum())


def build_graphs(
  ds: Dataset,
  views: str = "paper",
  add_self_loops: bool = True,
  use_kg_edges: bool = True,
  use_interest_edges: bool = True,
) -> Dict[str, jraph.GraphsTuple]:
  """Graphs used by training, keyed by role:

  - `cikg`: the main BPR graph (user-item + KG + user-interest, self loops if configured);
  - `cikg_no_loops` / `cikg_with_loops`: the same without / with self loops on every node, for
    the interest-reconstruction encoder and decoder;
  - `cf`, `interest`, `kg`: the three contrastive views (docs/method.md §2), in `views` mode.
  """
  if views not in VIEW_MODES:
    raise ValueError(f"views must be one of {VIEW_MODES}, got {views!r}")
  n = ds.n_nodes
  all_nodes = np.arange(n)
  ui = user_item_pairs(ds)
  kg = kg_pairs(ds) if use_kg_edges else np.zeros((0, 2), np.int64)
  uint = user_interest_pairs(ds) if use_interest_edges else np.zeros((0, 2), np.int64)
  cikg = np.concatenate([ui, kg, uint])
  graphs = {
    "cikg_with_loops": make_graph(n, cikg, all_nodes),
    "cikg_no_loops": make_graph(n, cikg, None),
  }
  graphs["cikg"] = graphs["cikg_with_loops" if add_self_loops else "cikg_no_loops"]
  if views == "paper":
    # Self loops belong to the main graph only (docs/method.md §2); the views are plain edge sets.
    graphs["cf"] = make_graph(n, ui, None)
    graphs["interest"] = make_graph(n, np.concatenate([uint, ui]), None)
    graphs["kg"] = make_graph(n, np.concatenate([kg, ui]), None)
  else:
    # The release's views (docs/method.md §2, §6): its "CF" view aliases the whole CIKG edge list (the
    # model adds self loops only to its own copy), and the interest and KG views carry self loops
    # on the user and item nodes instead of the user-item edges.
    cf_nodes = np.arange(ds.n_users + ds.n_items)
    graphs["cf"] = graphs["cikg_no_loops"]
    graphs["interest"] = make_graph(n, uint, cf_nodes)
    graphs["kg"] = make_graph(n, kg, cf_nodes)
  log.info("graphs:\n%s", describe_graphs(graphs))
  return graphs


def describe_graphs(graphs: Dict[str, jraph.GraphsTuple]) -> str:
  rows = []
  for name, g in graphs.items():
    loops = num_self_loops(g)
    rows.append(
      f"  graph {name:14s} nodes {int(g.n_node[0]):,}  directed edges "
      f"{int(g.n_edge[0]) - loops:,} + {loops:,} self loops"
    )
  return "\n".join(rows)

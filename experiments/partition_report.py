"""Per-block edges, halo and padding of a dataset's CIKG cut into row blocks for D devices, for
each node order and cut of cikg_jax/graphs/partition.py: what an exchange of only the needed sender
rows sends per layer (the halo, parallel.exchange=halo) against the all_gather of the whole table
(N rows). The graph modes cut equal rows in the order parallel.node_order names.

  python experiments/partition_report.py --config=configs/dbbook2014.py --devices=8
  python experiments/partition_report.py --config=configs/synthetic_large.py:0.01 --devices=8,32
  python experiments/partition_report.py --config=configs/dbbook2014.py --devices=8,32 \
    --out=experiments/results/partition/dbbook2014.jsonl

Prints one JSON line per (order, cut, devices) and a table. On dbbook2014's CIKG (14k nodes,
small-world: users, books and a dense KG) no order brings the largest halo below about half the
rows (experiments/results/partition/): an exchange of needed rows pays on graphs with locality.
"""

from __future__ import annotations

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402
import numpy as np  # noqa: E402

from cikg_jax.data import dataset as dataset_lib  # noqa: E402
from cikg_jax.graphs import cikg as graph_lib  # noqa: E402
from cikg_jax.graphs import partition  # noqa: E402
from experiments import runner  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", "configs/dbbook2014.py", "Dataset config.")
flags.DEFINE_list("devices", ["8"], "Device counts (row blocks).")
flags.DEFINE_list("orders", list(partition.ORDERS), "Node orders.")
flags.DEFINE_string(
  "out", "", "Append the JSON rows to this file (e.g. experiments/results/partition/)."
)


def main(argv):
  del argv
  c = FLAGS.config
  ds = dataset_lib.load_from_config(c)
  g = graph_lib.build_graphs(ds, views=c.views, add_self_loops=False)["cikg_no_loops"]
  senders, receivers, n = np.asarray(g.senders), np.asarray(g.receivers), int(g.n_node[0])
  rows = []
  for d in map(int, FLAGS.devices):
    for method in FLAGS.orders:
      t0 = time.perf_counter()
      order = partition.node_order(senders, receivers, n, method, n_blocks=d)
      seconds = time.perf_counter() - t0
      for cut, bounds in (
        ("equal_rows", partition.equal_row_bounds(n, d)),
        ("balanced_edges", partition.edge_balanced_bounds(order, receivers, n, d)),
      ):
        s = partition.block_stats(senders, receivers, order, bounds)
        row = dict(
          dataset=c.dataset,
          nodes=n,
          edges=len(receivers),
          devices=d,
          order=method,
          cut=cut,
          order_seconds=round(seconds, 3),
          max_edges=s["max_edges"],
          edge_imbalance=round(s["edge_imbalance"], 3),
          halo_max=s["halo_max"],
          halo_max_over_n=round(s["halo_max"] / n, 4),
          padding_max=max(s["padding"]),
          # H as graph_memory.py --halo takes it: the exchange's rows per peer over a block's rows
          halo_per_peer_over_block=round(s["halo_per_peer_max"] / -(-n // d), 4),
          blocks=s,
          commit=runner.git_commit(),
        )
        rows.append(row)
        print(json.dumps(row), flush=True)
        if FLAGS.out:
          with open(FLAGS.out, "a") as f:
            f.write(json.dumps(row) + "\n")
  print(
    "\n| order | cut | D | max edges / mean | largest halo (rows) | halo / N | H / B | padding |"
  )
  print("|---|---|---|---|---|---|---|---|")
  for r in rows:
    print(
      f"| {r['order']} | {r['cut']} | {r['devices']} | {r['edge_imbalance']:.2f} | "
      f"{r['halo_max']} | {r['halo_max_over_n']:.3f} | {r['halo_per_peer_over_block']:.3f} | "
      f"{r['padding_max']} |"
    )


if __name__ == "__main__":
  app.run(main)

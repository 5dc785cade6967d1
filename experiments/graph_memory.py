"""Per-device memory of the graph-parallel train step (config.parallel.mode "graph" /
"data_graph") for a graph of any size, without the graph: the step is compiled for abstract
inputs (shapes, dtypes, shardings) on simulated CPU devices and XLA's buffer assignment reports
the bytes per device (arguments, temporaries, outputs), and the compiled program's collectives give
the bytes each device receives per step (experiments/hlo_traffic.py). Next to them, the formula of
docs/scaling.md.

  XLA_FLAGS=--xla_force_host_platform_device_count=8 python experiments/graph_memory.py \\
      --nodes=100_000_000 --edges=2_000_000_000 --dim=64 --devices=8 --model=lightgcn

`--edges` counts the CIKG's directed edges without self loops (2 per undirected pair);
`--ui_share` is the share of its pairs that are user-item pairs (the contrastive views are built
from them). Edges are spread evenly over the receiver blocks, as `parallel.node_order=balanced`
spreads them (in id order a power-law graph's largest block is 2.5-3 times the mean, and every
device holds as many edges as the largest). `--halo=h` takes the rows per peer a partition needs
as a share of a block (experiments/partition_report.py measures it). XLA:CPU's buffer assignment is
an estimate of a GPU's (other fusions, no cuSPARSE workspace); the formula is the same on both.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

if __name__ == "__main__" and "--devices" in " ".join(sys.argv):  # before jax is imported
  n = [a.split("=")[1] for a in sys.argv if a.startswith("--devices=")]
  if n and "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={n[0]}"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cikg_jax import runtime  # noqa: E402

if __name__ == "__main__":
  # XLA:CPU's memory-optimised scheduler, as training on a CPU uses (cikg_jax/runtime.py): the
  # default runs independent branches side by side and keeps more buffers alive at once.
  runtime.set_xla_cpu_flags()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402
import numpy as np  # noqa: E402

from cikg_jax.models import cikgrec  # noqa: E402
from cikg_jax.parallel import graph_parallel as gp  # noqa: E402
from cikg_jax.training import steps  # noqa: E402
from configs import base  # noqa: E402
from experiments import hlo_traffic  # noqa: E402

GB = 1e9


def operator_edges(edges: int, nodes: int, ui_share: float, model_name: str):
  """Directed edges of each distinct operator the model propagates over (steps.make_graphs, paper
  views): LightGCN the CIKG with self loops; CIKGRec that (its reconstruction, which drops edges,
  uses the same operator) and the three views (cf: user-item; interest: user-item +
  user-interest; kg: user-item + KG)."""
  ui = int(edges * ui_share)
  if model_name == "lightgcn":
    return {"cikg": edges + nodes}
  rest = edges - ui  # KG + user-interest, split evenly here
  return {
    "cikg": edges + nodes,
    "cf": ui,
    "interest": ui + rest // 2,
    "kg": ui + rest - rest // 2,
  }


def formula(nodes, op_edges, dim, devices, batch, model_name, layers, backend):
  """docs/scaling.md's per-device bytes (float32 and int32: 4 bytes), with the all_gather."""
  rows = -(-nodes // devices)
  block = rows * dim * 4  # one (N/D, d) float32 block
  per_edge = 24  # senders, receivers, weight, pair + the bcsr transpose's indices and permutation
  out = {
    "table_adam": 3 * block,
    "edges": sum(-(-e // devices) * per_edge + (rows + nodes + 2) * 4 for e in op_edges.values()),
    "gathered_layer_input": nodes * dim * 4,  # one at a time (forward), its cotangent (backward)
  }
  if model_name == "lightgcn":
    propagations = layers  # layer outputs of the main graph
  else:  # main graph, 3 views, UIR encoder (2) and decoder (1); their normalised/decoded copies
    propagations = 4 * layers + 3 + 6
    out["info_nce_logits"] = 2 * batch * rows * 4  # user and item term, B x N/D each
  out["layer_outputs"] = propagations * block
  if backend == "segment":
    out["segment_messages"] = max(-(-e // devices) for e in op_edges.values()) * dim * 4
  out["total"] = sum(out.values())
  return out


def distinct_bytes_per_device(tree, n_graph: int) -> int:
  """Bytes one device holds of the arrays in `tree`, each distinct array (by identity) once:
  leaves sharded over the "graph" axis count 1/n_graph of their size."""
  seen, total = set(), 0
  for leaf in jax.tree_util.tree_leaves(tree):
    if id(leaf) in seen or not hasattr(leaf, "shape"):
      continue
    seen.add(id(leaf))
    size = int(np.prod(leaf.shape)) * np.dtype(leaf.dtype).itemsize
    spec = getattr(getattr(leaf, "sharding", None), "spec", None)
    sharded = (
      spec is not None
      and len(spec) > 0
      and spec[0] is not None
      and gp.GRAPH in (spec[0] if isinstance(spec[0], tuple) else (spec[0],))
    )
    total += size // n_graph if sharded else size
  return total


TABLE_HEADER = (
  "| model | backend | devices (mesh) | batch | exchange | `cl.chunk` | `model.remat` "
  "| rows received per layer | received per step | arguments | temporaries | peak per device "
  "| formula |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|"
)


def xla_memory(program, args, n_graph: int, n_devices: int):
  """XLA's buffer assignment per device of one compiled program for abstract `args`, and the
  bytes a device receives through its collectives (experiments/hlo_traffic.py)."""
  compiled = program.lower(*args).compile()
  mem = compiled.memory_analysis()
  xla = {
    k: getattr(mem, f"{k}_size_in_bytes")
    for k in ("argument", "output", "alias", "temp", "generated_code")
  }
  # XLA counts an array passed twice (the CIKG operator under two names) twice; a device holds it
  # once
  xla["argument_distinct"] = distinct_bytes_per_device(args, n_graph)
  # arguments and temporaries are live together; donated inputs' outputs alias them
  xla["peak_estimate"] = xla["argument_distinct"] + xla["temp"] + xla["output"] - xla["alias"]
  return xla, hlo_traffic.traffic(compiled.as_text(), n_devices)


def table(records, commits) -> str:
  """The docs/scaling.md table of the records (JSON lines of --out) made at `commits`."""
  rows = [TABLE_HEADER]
  for r in records:
    if r.get("commit") not in commits:
      continue
    a, xla = r["args"], r["xla_per_device_GB"]
    n_graph = a["devices"] // a["data_devices"]
    mesh = str(a["devices"])
    if a["data_devices"] > 1:
      mesh += f" ({a['data_devices']} data x {n_graph} graph)"
    h = r["halo_rows_per_peer"]
    if a.get("ring"):
      exchange, per_layer = "ring", r["sender_rows_per_layer"] * (n_graph - 1) // n_graph
    elif a.get("rounds"):
      exchange, per_layer = f"halo rounds, H = {a['halo']:g} B", (n_graph - 1) * h
    elif h:
      exchange, per_layer = f"halo, H = {a['halo']:g} B", n_graph * h
    else:
      exchange, per_layer = "all_gather", r["sender_rows_per_layer"] * (n_graph - 1) // n_graph
    cikgrec_only = lambda v: v if a["model"] == "cikgrec" else "-"
    model = "CIKGRec" if a["model"] == "cikgrec" else "LightGCN"
    if a.get("split_step"):
      model += " (split step)"
    # the formula (docs/scaling.md) is that of the all_gather without cl.chunk and remat
    plain = not h and not a.get("ring") and not a["cl_chunk"] and not a["remat"]
    formula_gb = f"{r['formula_per_device_GB']['total']:.1f} GB" if plain else "-"
    rows.append(
      f"| {model} | {a['backend']} | {mesh} "
      f"| {a['batch']} | {exchange} | {cikgrec_only(a['cl_chunk'] or '-')} "
      f"| {cikgrec_only('on' if a['remat'] else '-')} | {per_layer / 1e6:.2f}M "
      f"| {r['received_per_step_GB']['total']:.1f} GB | {xla['argument_distinct']:.1f} GB "
      f"| {xla['temp']:.1f} GB | **{xla['peak_estimate']:.1f} GB** "
      f"| {formula_gb} |"
    )
  return "\n".join(rows)


def main(argv=None):
  p = argparse.ArgumentParser(
    description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
  )
  p.add_argument("--nodes", type=int, default=100_000_000)
  p.add_argument("--edges", type=int, default=2_000_000_000)
  p.add_argument("--ui_share", type=float, default=0.5)
  p.add_argument("--users_share", type=float, default=0.2)
  p.add_argument("--items_share", type=float, default=0.1)
  p.add_argument("--interests", type=int, default=100_000)
  p.add_argument("--dim", type=int, default=64)
  p.add_argument("--layers", type=int, default=3)
  p.add_argument("--devices", type=int, default=8)
  p.add_argument("--data_devices", type=int, default=1, help=">1: a data x graph mesh")
  p.add_argument("--batch", type=int, default=1024)
  p.add_argument("--model", choices=("lightgcn", "cikgrec"), default="lightgcn")
  p.add_argument("--backend", choices=("bcsr", "segment"), default="bcsr")
  p.add_argument(
    "--cl_chunk", type=int, default=0, help="CIKGRec: InfoNCE over chunks of rows (config cl.chunk)"
  )
  p.add_argument(
    "--remat", action="store_true", help="CIKGRec: recompute views and UIR (config model.remat)"
  )
  p.add_argument(
    "--halo",
    type=float,
    default=0.0,
    help="the halo exchange (config parallel.exchange=halo) with H = halo x B rows received "
    "from each peer (the largest per-peer halo of a partition, as a share of a block's B rows; "
    "experiments/partition_report.py measures it); 0: the all_gather",
  )
  p.add_argument(
    "--ring",
    action="store_true",
    help="the ring exchange (config parallel.exchange=ring): each owner's block passed round the "
    "devices, one block of B rows in flight",
  )
  p.add_argument(
    "--rounds",
    action="store_true",
    help="with --halo: the halo rounds (config parallel.exchange=halo_rounds), each owner's H "
    "rows received in its own ppermute round, one round's rows in flight",
  )
  p.add_argument(
    "--split_step",
    action="store_true",
    help="CIKGRec: a program per loss part and one for the update (config train.split_step); "
    "the peak is the largest program's",
  )
  p.add_argument("--out", default="", help="append the result as one JSON line to this file")
  p.add_argument(
    "--table",
    default="",
    help="print the markdown table of this file's records of --commit (default: the newest "
    "record's commit) and compile nothing",
  )
  p.add_argument("--commit", default="", help="comma-separated commits of --table's rows")
  args = p.parse_args(argv)
  if args.table:
    with open(args.table) as f:
      records = [json.loads(line) for line in f if line.strip()]
    text = table(records, set((args.commit or records[-1]["commit"]).split(",")))
    print(text)
    return text
  n, d = args.nodes, args.dim
  c = base.get_config()
  n_users, n_items = int(n * args.users_share), int(n * args.items_share)
  common = dict(
    n_users=n_users,
    n_items=n_items,
    n_nodes=n,
    embed_dim=d,
    num_layers=args.layers,
    backend=args.backend,
    cf_weight=c.train.cf_weight,
    l2=c.train.l2,
  )
  if args.model == "lightgcn":
    net = cikgrec.LightGCN(**common)
  else:
    u = c.uir
    net = cikgrec.CIKGRec(
      **common,
      n_relations=64,
      contrastive=cikgrec.Contrastive(c.cl.weight, c.cl.tau, c.cl.eps, args.cl_chunk),
      reconstruction=cikgrec.Reconstruction(
        u.weight, u.enc_layers, u.dec_layers, u.replace_rate, u.edge_drop, u.gamma
      ),
      transe=cikgrec.TransE(True, c.kge.l2),
      remat=args.remat,
    )
  n_graph = args.devices // args.data_devices
  shape = (
    {gp.GRAPH: n_graph}
    if args.data_devices == 1
    else gp.mesh_shape("data_graph", args.devices, args.data_devices)
  )
  mesh = gp.make_mesh(shape)
  op_edges = operator_edges(args.edges, n, args.ui_share, args.model)
  n_padded = gp.padded_rows(n, n_graph)
  graph_sharding = jax.sharding.NamedSharding(mesh, P(gp.GRAPH))

  block = n_padded // n_graph
  halo = max(1, int(round(args.halo * block))) if args.halo > 0 else 0
  n_cols = block + n_graph * halo if halo else n_padded  # the rows a block's senders index

  if args.ring and halo:
    raise SystemExit("error: --ring and --halo are two exchanges; pick one")
  if args.rounds and not halo:
    raise SystemExit("error: --rounds exchanges the halo in rounds: give --halo too")

  def abstract_op(e):
    per = -(-e // n_graph)
    arr = lambda size, dtype: jax.ShapeDtypeStruct((size,), dtype, sharding=graph_sharding)
    i32 = jnp.int32
    if args.ring or args.rounds:
      # D sub-blocks of E / D^2 edges, each with the CSR arrays of a B x B matrix; with the halo
      # rounds each reads the H rows its owner sends
      sub = -(-per // n_graph)
      return gp.ShardedOperator(
        send=arr(n_graph * n_graph * halo, i32) if args.rounds else None,
        halo=halo if args.rounds else 0,
        senders=arr(n_graph * n_graph * sub, i32),
        receivers=arr(n_graph * n_graph * sub, i32),
        weight=arr(n_graph * n_graph * sub, jnp.float32),
        pair=arr(n_graph * n_graph * sub, i32),
        indptr=arr(n_graph * n_graph * (block + 1), i32),
        t_indptr=arr(n_graph * n_graph * (block + 1), i32),
        t_indices=arr(n_graph * n_graph * sub, i32),
        t_perm=arr(n_graph * n_graph * sub, i32),
        n_nodes=n,
        n_padded=n_padded,
        n_devices=n_graph,
        n_pairs=e // 2,
        n_edges=e,
        ring=bool(args.ring),
        rounds=bool(args.rounds),
      )
    return gp.ShardedOperator(
      send=arr(n_graph * n_graph * halo, i32) if halo else None,
      halo=halo,
      senders=arr(n_graph * per, i32),
      receivers=arr(n_graph * per, i32),
      weight=arr(n_graph * per, jnp.float32),
      pair=arr(n_graph * per, i32),
      indptr=arr(n_graph * (n_padded // n_graph + 1), i32),
      t_indptr=arr(n_graph * (n_cols + 1), i32),
      t_indices=arr(n_graph * per, i32),
      t_perm=arr(n_graph * per, i32),
      n_nodes=n,
      n_padded=n_padded,
      n_devices=n_graph,
      n_pairs=e // 2,
      n_edges=e,
    )

  ops = {k: abstract_op(e) for k, e in op_edges.items()}
  if args.model == "cikgrec":  # the reconstruction drops edges of the CIKG with self loops
    ops["cikg_with_loops"] = ops["cikg"]
  # as GraphParallel places them: receivers and pair ids only where the step reads them
  needed = gp.edge_arrays_needed(net, ops)
  lean = {id(op): op.replace(receivers=None, pair=None) for op in ops.values()}
  ops = {k: op if id(op) in needed else lean[id(op)] for k, op in ops.items()}
  replicated = jax.sharding.NamedSharding(mesh, P())
  graphs = cikgrec.Graphs(
    ops=ops,
    interest_rows=jax.ShapeDtypeStruct((args.interests,), jnp.int32, sharding=replicated),
    n_users=n_users,
    n_items=n_items,
    n_nodes=n,
  )
  par = gp.GraphParallel(net, graphs, mesh)
  tx, kge_tx = steps.make_optimizers(c)
  use_kge = args.model == "cikgrec"
  template = gp.state_template(net, tx, kge_tx, use_kge)
  schedule = steps.epoch_schedule(np.full(2, 0.1, np.float32), 1)
  if args.split_step:
    step = par.make_split_train_step(tx, schedule, template)
  else:
    step = par.make_train_step(tx, schedule, template)
  batch_sharding = jax.sharding.NamedSharding(mesh, P(gp.DATA) if par.data else P())
  b = args.batch
  batch = {
    k: jax.ShapeDtypeStruct((b,), jnp.int32, sharding=batch_sharding)
    for k in ("users", "pos", "neg")
  }
  batch["mask"] = jax.ShapeDtypeStruct((b,), jnp.float32, sharding=batch_sharding)
  key = jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=replicated)
  state = par.abstract_placed(template)
  step_args = (state, batch, key, par.graphs)
  if args.split_step:  # the part programs (the later ones add into the gradient), the update
    grads = par.abstract_placed(template.params)
    *parts, update = step.programs
    programs = [(p, step_args + ((grads,) if i else ())) for i, p in enumerate(parts)]
    programs.append((update, (state, grads)))
  else:
    programs = [(step, step_args)]
  per_program = [xla_memory(p, a, n_graph, args.devices) for p, a in programs]
  # the step's peak: its largest program's; traffic: all of them
  xla = dict(max(per_program, key=lambda m: m[0]["peak_estimate"])[0])
  received = {"received_bytes": 0, "by_kind": {}, "count": {}}
  for _, r in per_program:
    received["received_bytes"] += r["received_bytes"]
    for field in ("by_kind", "count"):
      for k, v in r[field].items():
        received[field][k] = received[field].get(k, 0) + v
  result = {
    "args": vars(args),
    "mesh": shape,
    "xla_flags": os.environ.get("XLA_FLAGS", ""),
    "halo_rows_per_peer": halo,
    "sender_rows_per_layer": n_cols,
    "operator_edges": op_edges,
    "xla_per_device_GB": {k: round(v / GB, 3) for k, v in xla.items()},
    "programs_peak_GB": [round(m["peak_estimate"] / GB, 3) for m, _ in per_program],
    # what one device receives per step (experiments/hlo_traffic.py), next to one all_gather of
    # the whole (N, d) table, the unit the per-layer gather costs
    "received_per_step_GB": {
      "total": round(received["received_bytes"] / GB, 3),
      **{k: round(v / GB, 3) for k, v in received["by_kind"].items()},
    },
    "collectives_per_step": received["count"],
    "one_table_all_gather_GB": round(n_padded * d * 4 * (n_graph - 1) / n_graph / GB, 3),
    "formula_per_device_GB": {
      k: round(v / GB, 3)
      for k, v in formula(
        n, op_edges, d, n_graph, b // args.data_devices, args.model, args.layers, args.backend
      ).items()
    },
  }
  print(json.dumps(result, indent=1))
  if args.out:
    from cikg_jax.training import rundir
    from experiments import runner

    record = dict(result, commit=runner.git_commit(), machine=runtime.machine())
    rundir.append_line(args.out, record)
  return result


if __name__ == "__main__":
  main()

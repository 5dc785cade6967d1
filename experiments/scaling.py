"""Scaling study: train-step time, throughput (edge traversals per second) and peak memory per
device against the device count and parallel mode, for the paper's datasets and the synthetic
power-law graph. Each point runs in its own process (on CPU with N simulated devices:
XLA_FLAGS=--xla_force_host_platform_device_count=N), so the numbers show correctness and overhead
there, not speedups; on a multi-GPU host they are the real scaling table.

  python experiments/scaling.py --datasets=tiny,dbbook2014 --devices=1,2,4 --modes=data,graph
  python experiments/scaling.py --datasets=synthetic_large:0.01 --devices=1,2,4
  python experiments/scaling.py --render              # table + plot from the result files
  python experiments/scaling.py --write_gpu_script    # experiments/scaling_gpu.sh for a GPU host

Results: experiments/results/scaling/<dataset>__<mode>__d<devices>.json (command, commit, machine).
"""

from __future__ import annotations

import argparse
import glob
import json
import logging
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from cikg_jax import logs  # noqa: E402
from cikg_jax.training import rundir
from experiments import runner  # noqa: E402  (git_commit: HEAD, +dirty, CIKG_COMMIT)

log = logging.getLogger("cikg_jax.experiments.scaling")

RESULTS = os.path.join(ROOT, "experiments", "results", "scaling")
CONFIGS = {
  "tiny": "configs/tiny.py",
  "dbbook2014": "configs/dbbook2014.py",
  "book-crossing": "configs/book_crossing.py",
  "ml1m": "configs/ml1m.py",
}


def config_for(dataset: str):
  """The config of a dataset name; `synthetic_large:SCALE` for the generated graph."""
  if dataset.startswith("synthetic_large"):
    from configs import synthetic_large

    scale = dataset.split(":", 1)[1] if ":" in dataset else "1.0"
    return synthetic_large.get_config(scale)
  import importlib.util

  spec = importlib.util.spec_from_file_location("cfg", os.path.join(ROOT, CONFIGS[dataset]))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config()


def edges_per_step(graphs, config) -> int:
  """Edge traversals of one train step, forward and backward: every propagation of the loss."""
  ops = getattr(graphs, "ops", {})
  e = {k: int(op.graph.n_edge[0]) for k, op in ops.items()}
  layers = config.model.num_layers
  total = e.get("cikg", 0) * layers
  if config.cl.weight > 0:
    total += sum(e.get(v, 0) for v in ("cf", "interest", "kg")) * layers
  if config.uir.weight > 0:
    g = e.get("cikg_with_loops" if config.uir.edge_drop > 0 else "cikg_no_loops", 0)
    total += g * (config.uir.enc_layers + config.uir.dec_layers)
  return 2 * total  # forward + backward


def worker(dataset: str, mode: str, devices: int, steps: int, overrides) -> dict:
  """One point, in this process (its XLA_FLAGS already set by the parent)."""
  import jax
  import numpy as np

  from cikg_jax import runtime
  from cikg_jax.data import sampling
  from cikg_jax.training import steps as steps_lib
  from cikg_jax.training import train

  runtime.keep_freed_memory()
  config = config_for(dataset)
  config.parallel.mode = mode
  config.parallel.num_devices = devices
  for o in overrides:
    key, value = o.split("=", 1)
    node = config
    *path, last = key.split(".")
    for p in path:
      node = node[p]
    node[last] = type(node[last])(value) if not isinstance(node[last], bool) else value == "True"
  t0 = time.perf_counter()
  ds, config, net, graphs = steps_lib.setup(config)
  tx, kge_tx = steps_lib.make_optimizers(config)
  state = steps_lib.create_train_state(jax.random.PRNGKey(0), net, tx, kge_tx, config.kge.use)
  settings = steps_lib.step_settings(config, ds)
  samplers = train.make_samplers(config, ds, settings.use_kge)
  trainer = train.make_trainer(net, graphs, settings, tx, kge_tx, samplers)
  state = trainer.place(state)
  setup_seconds = time.perf_counter() - t0
  batches = sampling.bpr_epoch(
    ds.train, trainer.sampler, config.train.batch_size, np.random.default_rng(0)
  )
  n_batches = batches["users"].shape[0]
  times = []
  for s in range(steps + 1):  # the first step compiles
    batch = trainer.shard({k: v[s % n_batches] for k, v in batches.items()})
    t = time.perf_counter()
    state, terms = trainer.train_step(state, batch, jax.random.PRNGKey(s), trainer.graphs)
    jax.block_until_ready(terms["loss"])
    times.append(time.perf_counter() - t)
  step = statistics.median(times[1:])
  stats = [d.memory_stats() or {} for d in jax.local_devices()[:devices]]
  peaks = [s.get("peak_bytes_in_use") for s in stats if s.get("peak_bytes_in_use")]
  per_step_edges = edges_per_step(graphs, config)
  return {
    "dataset": dataset,
    "mode": mode,
    "devices": devices,
    "platform": jax.devices()[0].platform,
    "device_kind": jax.devices()[0].device_kind,
    "n_nodes": ds.n_nodes,
    "n_train": int(len(ds.train)),
    "cikg_edges": int(graphs.ops["cikg"].graph.n_edge[0]) if hasattr(graphs, "ops") else None,
    "batch_size": config.train.batch_size,
    "step_seconds_median": step,
    "step_seconds": times[1:],
    "compile_seconds": times[0],
    "setup_seconds": setup_seconds,
    "edge_traversals_per_step": per_step_edges,
    "edges_per_second": per_step_edges / step,
    "interactions_per_second": config.train.batch_size / step,
    "peak_bytes_per_device": max(peaks) if peaks else None,
    "peak_rss_mb_process": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
  }


def run_point(dataset, mode, devices, steps, overrides, out_dir, machine):
  name = f"{dataset.replace(':', '-')}__{mode}__d{devices}"
  path = os.path.join(out_dir, f"{name}.json")
  if os.path.exists(path):
    log.info("[scaling] %s: done before", name)
    return
  env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  if os.environ.get("JAX_PLATFORMS", "cpu") == "cpu" and not _has_gpu():
    flags = env.get("XLA_FLAGS", "")
    env["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={devices}".strip()
  cmd = [sys.executable, __file__, "--worker", f"--datasets={dataset}", f"--modes={mode}"]
  cmd += [f"--devices={devices}", f"--steps={steps}"] + [f"--set={o}" for o in overrides]
  t0 = time.time()
  p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
  if p.returncode != 0:
    err = (p.stderr.strip().splitlines() or ["?"])[-1]
    log.warning("[scaling] %s: FAILED: %s", name, err)
    return
  res = json.loads(p.stdout.strip().splitlines()[-1])
  res.update(
    commit=runner.git_commit(),
    machine=machine or f"{platform.node()} ({os.cpu_count()} cpu)",
    wall_seconds=time.time() - t0,
    command=" ".join(["python", "experiments/scaling.py"] + cmd[3:]),
  )
  os.makedirs(out_dir, exist_ok=True)
  rundir.write_json(path, res, indent=1)
  log.info(
    "[scaling] %s: step %.1f ms, %.1f M edges/s",
    name,
    res["step_seconds_median"] * 1e3,
    res["edges_per_second"] / 1e6,
  )


def _has_gpu() -> bool:
  try:
    return subprocess.run(["nvidia-smi", "-L"], capture_output=True).returncode == 0
  except OSError:
    return False


def render(out_dir: str) -> str:
  """A Markdown table of every point, and experiments/results/scaling/scaling.png."""
  rows = [json.load(open(f)) for f in sorted(glob.glob(os.path.join(out_dir, "*.json")))]
  if not rows:
    return "(no scaling results)"
  lines = [
    "| dataset | mode | devices | where | step ms | M edge traversals/s | peak MB / device |",
    "|---|---|---|---|---|---|---|",
  ]
  for r in sorted(rows, key=lambda r: (r["dataset"], r["mode"], r["devices"])):
    peak = r.get("peak_bytes_per_device")
    peak = f"{peak / 2**20:.0f}" if peak else f"(process RSS {r['peak_rss_mb_process']:.0f})"
    lines.append(
      f"| {r['dataset']} | {r['mode']} | {r['devices']} | {r['platform']} | "
      f"{r['step_seconds_median'] * 1e3:.1f} | {r['edges_per_second'] / 1e6:.1f} | {peak} |"
    )
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(6, 3.6))
  for (d, m), rs in _groups(rows).items():
    rs = sorted(rs, key=lambda r: r["devices"])
    ax.plot(
      [r["devices"] for r in rs],
      [r["step_seconds_median"] * 1e3 for r in rs],
      marker="o",
      label=f"{d} {m}",
    )
  ax.set_xlabel("devices")
  ax.set_ylabel("train step (ms)")
  ax.set_xscale("log", base=2)
  ax.set_yscale("log")
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(os.path.join(out_dir, "scaling.png"), dpi=120)
  return "\n".join(lines)


def _groups(rows):
  out = {}
  for r in rows:
    out.setdefault((r["dataset"], r["mode"]), []).append(r)
  return out


GPU_SCRIPT = """#!/usr/bin/env bash
# Written by experiments/scaling.py --write_gpu_script: the scaling table on a GPU host (all its
# GPUs; one GPU gives the single-device rows). Results land in experiments/results/scaling/.
set -eu
cd "$(dirname "$0")/.."
n=$(nvidia-smi -L | wc -l)
devs=1; d=2; while [ $d -le $n ]; do devs="$devs,$d"; d=$((d * 2)); done
python experiments/scaling.py --datasets=dbbook2014,book-crossing,synthetic_large:0.1 \\
  --modes=data,graph,data_graph --devices=$devs --steps=20 --machine="$(nvidia-smi -L | head -1)"
python experiments/scaling.py --render
"""


def main(argv=None):
  p = argparse.ArgumentParser(
    description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
  )
  p.add_argument("--datasets", default="tiny,dbbook2014")
  p.add_argument("--modes", default="data,graph,data_graph")
  p.add_argument("--devices", default="1,2,4")
  p.add_argument("--steps", type=int, default=5, help="timed steps per point (median)")
  p.add_argument("--set", action="append", default=[], help="config override KEY=VALUE")
  p.add_argument("--results_dir", "--results-dir", default=RESULTS)
  p.add_argument("--machine", default="")
  p.add_argument("--render", action="store_true")
  p.add_argument("--write_gpu_script", "--write-gpu-script", action="store_true")
  p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
  a = p.parse_args(argv)
  logs.to_stderr()
  if a.worker:
    print(json.dumps(worker(a.datasets, a.modes, int(a.devices), a.steps, a.set)))
    return
  if a.write_gpu_script:
    path = os.path.join(ROOT, "experiments", "scaling_gpu.sh")
    with open(path, "w") as f:
      f.write(GPU_SCRIPT)
    os.chmod(path, 0o755)
    print(path)
    return
  if a.render:
    print(render(a.results_dir))
    return
  for dataset in a.datasets.split(","):
    for mode in a.modes.split(","):
      for n in (int(x) for x in a.devices.split(",")):
        run_point(dataset, mode, n, a.steps, a.set, a.results_dir, a.machine)
  print(render(a.results_dir))


if __name__ == "__main__":
  main()

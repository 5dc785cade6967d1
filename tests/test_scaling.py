"""experiments/scaling.py: one point per process with simulated devices, a result file with the
throughput arithmetic, and the rendered table."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_scaling_points_write_results_and_a_table(tmp_path):
  out = tmp_path / "scaling"
  p = subprocess.run(
    [sys.executable, "experiments/scaling.py", "--datasets=tiny", "--modes=data,graph"]
    + [
      "--devices=1,2",
      "--steps=2",
      f"--results-dir={out}",
      "--set=synthetic_dir=" + str(tmp_path),
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert p.returncode == 0, p.stderr[-2000:]
  names = sorted(os.listdir(out))
  assert names == [
    "scaling.png",
    "tiny__data__d1.json",
    "tiny__data__d2.json",
    "tiny__graph__d1.json",
    "tiny__graph__d2.json",
  ]
  r = json.loads((out / "tiny__graph__d2.json").read_text())
  assert r["devices"] == 2 and r["mode"] == "graph" and len(r["step_seconds"]) == 2
  assert r["edges_per_second"] == r["edge_traversals_per_step"] / r["step_seconds_median"]
  assert r["edge_traversals_per_step"] > 0 and r["commit"] and r["command"]
  assert "| tiny | graph | 2 | cpu |" in p.stdout

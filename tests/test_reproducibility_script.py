"""experiments/reproducibility.py: the comparison of repeated runs' logs (by hand), and its smoke
mode end to end (slow: eight 2-epoch trainings)."""

import json
import math
import os
import subprocess
import sys

import pytest

from experiments import reproducibility

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_compare_finds_the_largest_difference_and_ignores_wall_times():
  log = [{"epoch": 0, "loss": 1.0, "valid/recall@20": 0.25}, {"epoch": 1, "loss": 0.5}]
  same = [dict(r) for r in log]
  assert reproducibility.compare([log, same]) == {
    "identical": True,
    "max_abs_diff": 0.0,
    "where": None,
  }
  moved = [dict(r) for r in log]
  moved[1]["loss"] = 0.5 + 2**-20
  moved[0]["valid/recall@20"] = 0.25 + 2**-30
  out = reproducibility.compare([log, same, moved])
  assert out["identical"] is False and out["max_abs_diff"] == 2**-20
  assert out["where"] == "epoch 1: loss"
  assert reproducibility.compare([log, log[:1]])["max_abs_diff"] == math.inf
  assert reproducibility._numbers(
    {"loss": 2, "seconds": 3.0, "train_seconds": 1.0, "ok": True}
  ) == {"loss": 2.0}


@pytest.mark.slow
def test_quick_mode_finds_cpu_runs_identical(tmp_path):
  proc = subprocess.run(
    [
      sys.executable,
      "experiments/reproducibility.py",
      "--quick",
      "--modes=segment:off,segment:on,bcsr:on,bcsr:off",
      f"--runs_dir={tmp_path / 'runs'}",
      f"--results_dir={tmp_path / 'results'}",
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=1800,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.load(open(tmp_path / "results" / "reproducibility" / "synthetic__cikgrec__cpu.json"))
  modes = [k for k in out if "deterministic=" in k and "ratio" not in k]
  assert len(modes) == 4 and all(out[m]["identical"] for m in modes), out
  assert {out[m]["propagation_backend"] for m in modes} == {"segment", "bcsr"}
  assert out["epoch_time_ratio"]["segment, deterministic=False"] == 1.0

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def result(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("parallel")
  env = dict(
    os.environ,
    XLA_FLAGS="--xla_force_host_platform_device_count=4",
    PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
  )
  proc = subprocess.run(
    [sys.executable, os.path.join(ROOT, "tests", "parallel_worker.py"), str(tmp)],
    env=env,
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=900,
  )
  line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
  assert proc.returncode == 0 and line, proc.stderr[-3000:]
  return json.loads(line[0][len("RESULT ") :])


def test_pmap_step_equals_single_device_step(result):
  sgd, adam = result["sgd"], result["adam"]
  assert sgd["max_param_change"] > 1e-4 and adam["max_param_change"] > 1e-4  # steps did something
  assert sgd["max_param_diff"] < 1e-3 * sgd["max_param_change"]  # gradients agree
  assert adam["max_param_diff"] < 1e-2 * adam["max_param_change"]
  single, multi = result["metrics_single"], result["metrics_multi"]
  for key in ("loss", "bpr", "reg", "cl", "cl_user", "cl_item", "uir", "uir_masked_rows"):
    assert multi[key] == pytest.approx(single[key], rel=1e-5), key


def test_pmap_kge_step_equals_single_device(result):
  assert result["kge_max_param_change"] > 1e-4  # the TransE step did something
  assert result["kge_max_param_diff"] < 1e-6


def test_training_on_4_devices_matches_1(result):
  one, four = result["runs"]["1"], result["runs"]["4"]
  assert (one["devices"], four["devices"]) == (1, 4)
  for key, value in one["test"].items():
    assert four["test"][key] == pytest.approx(value, abs=2e-3), key

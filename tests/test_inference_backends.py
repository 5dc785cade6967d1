"""The vLLM server launcher's life cycle (with the stand-in server as the process) and its command line."""

from pathlib import Path
import sys
import time

import pytest

from inference.backends.vllm_server import VLLMServer, free_port, server_command

FAKE = Path(__file__).parent / "inference_fixtures" / "fake_openai_server.py"


def test_command_line_cpu_and_gpu():
  cpu = server_command(
    "/v/python",
    "/m",
    "smol",
    "127.0.0.1",
    8001,
    dtype="bfloat16",
    max_model_len=2048,
    enforce_eager=True,
    seed=7,
  )
  assert cpu[:4] == ["/v/python", "-m", "vllm.entrypoints.openai.api_server", "--model"]
  joined = " ".join(cpu)
  for part in (
    "--served-model-name smol",
    "--port 8001",
    "--generation-config vllm",
    "--max-model-len 2048",
    "--enforce-eager",
    "--seed 7",
    "--dtype bfloat16",
  ):
    assert part in joined
  assert "--gpu-memory-utilization" not in joined
  gpu = server_command(
    "py",
    "Qwen/Qwen2.5-7B-Instruct",
    "q",
    "0.0.0.0",
    8000,
    revision="abc",
    tensor_parallel_size=2,
    gpu_memory_utilization=0.9,
    use_cli=True,
  )
  assert gpu[:3] == ["vllm", "serve", "Qwen/Qwen2.5-7B-Instruct"]
  assert "--tensor-parallel-size 2" in " ".join(gpu) and "--gpu-memory-utilization 0.9" in " ".join(
    gpu
  )
  assert "--revision abc" in " ".join(gpu)


def test_start_health_stop(tmp_path):
  port = free_port()
  srv = VLLMServer(
    [sys.executable, str(FAKE), "--port", str(port)],
    "127.0.0.1",
    port,
    "fake-model",
    {},
    tmp_path / "server.log",
    startup_timeout_s=20,
  )
  with srv:
    assert srv.proc.poll() is None
    assert srv.endpoint(4).base_url == f"http://127.0.0.1:{port}/v1"
  assert srv.proc.poll() is not None


def test_wrong_served_name_times_out_and_process_is_stopped(tmp_path):
  port = free_port()
  srv = VLLMServer(
    [sys.executable, str(FAKE), "--port", str(port)],
    "127.0.0.1",
    port,
    "other-model",
    {},
    tmp_path / "server.log",
    startup_timeout_s=2,
  )
  with pytest.raises(TimeoutError, match="not healthy"):
    srv.start()
  assert srv.proc.poll() is not None


def test_early_exit_reports_log_tail(tmp_path):
  cmd = [
    sys.executable,
    "-c",
    "import sys; print('CUDA? Failed to infer device type'); sys.exit(3)",
  ]
  srv = VLLMServer(cmd, "127.0.0.1", free_port(), "m", {}, tmp_path / "s.log", startup_timeout_s=20)
  t0 = time.monotonic()
  with pytest.raises(RuntimeError, match=r"exited with code 3(.|\n)*Failed to infer device type"):
    srv.start()
  assert time.monotonic() - t0 < 10


def test_stop_kills_a_process_ignoring_sigterm(tmp_path):
  port = free_port()
  code = (
    "import signal, sys, runpy; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    f"sys.argv=['x', '--port', '{port}']; runpy.run_path({str(FAKE)!r}, run_name='__main__')"
  )
  srv = VLLMServer(
    [sys.executable, "-c", code], "127.0.0.1", port, "fake-model", {}, tmp_path / "s.log", 20
  )
  srv.start()
  srv.stop(grace_s=0.5)
  assert srv.proc.poll() is not None


def test_make_backend_builds_openai_from_config_and_rejects_unknown():
  import importlib.util

  from inference.backends import make_backend
  from inference.backends.openai_client import OpenAIBackend

  root = Path(__file__).resolve().parents[1]
  spec = importlib.util.spec_from_file_location("c", root / "configs/llm/openai_endpoints.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  c = mod.get_config()
  c.endpoints = (
    {"base_url": "http://127.0.0.1:1/v1", "concurrency": 3},
    {"base_url": "http://127.0.0.1:2/v1"},
  )
  c.client.rate_limit_rps = 5.0
  with make_backend(c) as b:
    assert isinstance(b, OpenAIBackend) and [e.concurrency for e in b.endpoints] == [3, 8]
    assert b.describe()["rate_limit_rps"] == 5.0 and b.retry.max_attempts == c.client.max_attempts
  c.backend = "tgi"
  with pytest.raises(ValueError, match="config.backend"):
    with make_backend(c):
      pass

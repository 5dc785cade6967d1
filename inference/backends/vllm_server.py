"""Start vLLM's OpenAI server for the configured model, wait until it is healthy, stop it cleanly.

On GPUs this is `vllm serve MODEL ...`; with the CPU build (`vllm-cpu`) the `vllm serve` entry point
fails (its metadata looks for a distribution named `vllm`), so the module is started directly:
`python -m vllm.entrypoints.openai.api_server --model ...` (docs/method.md §7). Both take the same flags.
The server's output reaches its log file through `inference.redact.redact`, line by line, as does
the command line written at its top: a token in `server.extra_args` or printed by vLLM never lands
there. The client sends the key in VLLM_API_KEY (the variable vLLM's server itself reads), "EMPTY"
if unset.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Dict, List, Optional
import urllib.error
import urllib.request

from inference.backends.openai_client import Endpoint
from inference.redact import redact


def free_port(host: str = "127.0.0.1") -> int:
  with socket.socket() as s:
    s.bind((host, 0))
    return s.getsockname()[1]


def server_command(
  python: str,
  model: str,
  served_name: str,
  host: str,
  port: int,
  *,
  dtype: str = "auto",
  max_model_len: Optional[int] = None,
  revision: Optional[str] = None,
  seed: int = 0,
  tensor_parallel_size: int = 1,
  gpu_memory_utilization: Optional[float] = None,
  enforce_eager: bool = False,
  use_cli: bool = False,
  extra_args=(),
) -> List[str]:
  """The command line; `--generation-config vllm` so the model's defaults never override ours."""
  head = (
    ["vllm", "serve", model]
    if use_cli
    else [python, "-m", "vllm.entrypoints.openai.api_server", "--model", model]
  )
  cmd = head + [
    "--served-model-name",
    served_name,
    "--host",
    host,
    "--port",
    str(port),
    "--dtype",
    dtype,
    "--seed",
    str(seed),
    "--generation-config",
    "vllm",
    "--tensor-parallel-size",
    str(tensor_parallel_size),
  ]
  if max_model_len:
    cmd += ["--max-model-len", str(max_model_len)]
  if revision:
    cmd += ["--revision", revision]
  if gpu_memory_utilization is not None:
    cmd += ["--gpu-memory-utilization", str(gpu_memory_utilization)]
  if enforce_eager:
    cmd.append("--enforce-eager")
  return cmd + [str(a) for a in extra_args]


def _copy_redacted(stream, log) -> None:
  """Copy the server's output into its log, each line through `redact`; closes both at the end."""
  try:
    for line in iter(stream.readline, b""):
      log.write(redact(line))
      log.flush()
  finally:
    stream.close()
    log.close()


class VLLMServer:
  """Context manager around one server process (its own process group, log file kept)."""

  def __init__(
    self,
    cmd: List[str],
    host: str,
    port: int,
    served_name: str,
    env: Dict[str, str],
    log_path: Path,
    startup_timeout_s: float = 600.0,
  ):
    self.cmd, self.host, self.port, self.served_name = cmd, host, port, served_name
    self.env, self.log_path, self.startup_timeout_s = env, Path(log_path), startup_timeout_s
    self.proc: Optional[subprocess.Popen] = None
    self._pump: Optional[threading.Thread] = None

  @classmethod
  def from_config(cls, config) -> "VLLMServer":
    m, e, s = config.model, config.engine, config.server
    port = s.port or free_port(s.host)
    gpu_util = None if e.device == "cpu" else e.gpu_memory_utilization
    cmd = server_command(
      s.python or sys.executable,
      m.path or m.name,
      m.served_name or m.name,
      s.host,
      port,
      dtype=e.dtype,
      max_model_len=e.max_model_len,
      revision=m.revision,
      seed=config.seed,
      tensor_parallel_size=e.tensor_parallel_size,
      gpu_memory_utilization=gpu_util,
      enforce_eager=e.enforce_eager,
      use_cli=s.use_cli,
      extra_args=list(s.extra_args),
    )
    env = {**os.environ, **{k: str(v) for k, v in dict(s.env).items()}}
    log = Path(s.log_path or Path(config.out_dir) / "vllm_server.log")
    return cls(cmd, s.host, port, m.served_name or m.name, env, log, s.startup_timeout_s)

  @property
  def base_url(self) -> str:
    return f"http://{self.host}:{self.port}/v1"

  def endpoint(self, concurrency: int = 8) -> Endpoint:
    return Endpoint(self.base_url, concurrency, api_key_env="VLLM_API_KEY")

  def start(self) -> "VLLMServer":
    self.log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(self.log_path, "ab")
    log.write(("\n$ " + " ".join(redact(self.cmd)) + "\n").encode())
    log.flush()
    try:
      self.proc = subprocess.Popen(
        self.cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=self.env,
        start_new_session=True,
      )
    except FileNotFoundError:
      log.close()
      raise FileNotFoundError(
        f"{self.cmd[0]}: not found, so the vLLM server cannot start: install vLLM "
        "(`pip install -e '.[vllm]'` on an NVIDIA GPU machine; on CPU `bash "
        "inference/setup_vllm_cpu.sh` and --config=configs/llm/smollm2_cpu.py), or set "
        "--config.server.python to a Python that has it"
      ) from None
    self._pump = threading.Thread(target=_copy_redacted, args=(self.proc.stdout, log), daemon=True)
    self._pump.start()
    try:
      self.wait_healthy()
    except BaseException:
      self.stop()
      raise
    return self

  def _get(self, path: str, timeout: float = 2.0):
    with urllib.request.urlopen(f"http://{self.host}:{self.port}{path}", timeout=timeout) as r:
      return r.status, r.read()

  def wait_healthy(self) -> float:
    """Poll /health then /v1/models until the served model is listed; seconds waited."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < self.startup_timeout_s:
      if self.proc.poll() is not None:
        if self._pump is not None:
          self._pump.join(timeout=5)  # the last lines of a crashed server
        raise RuntimeError(
          f"vLLM server exited with code {self.proc.returncode} while starting; "
          f"log {self.log_path}:\n{self.log_tail()}"
        )
      try:
        status, _ = self._get("/health")
        if status == 200:
          _, body = self._get("/v1/models")
          names = [d["id"] for d in json.loads(body)["data"]]
          if self.served_name in names:
            return time.monotonic() - t0
      except (urllib.error.URLError, ConnectionError, OSError, ValueError, KeyError):
        pass
      time.sleep(1.0)
    raise TimeoutError(
      f"vLLM server not healthy after {self.startup_timeout_s:.0f} s; log {self.log_path}:\n"
      f"{self.log_tail()}"
    )

  def log_tail(self, n: int = 30) -> str:
    try:
      return redact("\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:]))
    except OSError:
      return "(no log)"

  def stop(self, grace_s: float = 30.0) -> Optional[int]:
    """SIGTERM the process group, SIGKILL after `grace_s`; returns the exit code."""
    try:
      return self._stop(grace_s)
    finally:
      if self._pump is not None:
        self._pump.join(timeout=5)

  def _stop(self, grace_s: float) -> Optional[int]:
    if self.proc is None or self.proc.poll() is not None:
      return None if self.proc is None else self.proc.returncode
    try:
      os.killpg(self.proc.pid, signal.SIGTERM)
      return self.proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
      os.killpg(self.proc.pid, signal.SIGKILL)
      return self.proc.wait(timeout=10)
    except ProcessLookupError:
      return self.proc.wait(timeout=10)

  def __enter__(self) -> "VLLMServer":
    return self.start()

  def __exit__(self, *exc) -> None:
    self.stop()

"""Credentials are named (api_key_env), never given; nothing the pipeline writes or prints carries one."""

import importlib.util
import json
import os
from pathlib import Path
import secrets
import subprocess
import sys

import ml_collections
import pytest

from inference.backends.credentials import CredentialError, endpoint_specs, resolve_api_key
from inference.backends.openai_client import OpenAIBackend
from inference.backends.vllm_server import VLLMServer, free_port
from inference.redact import MASK, redact
from inference.runner import run_generation

sys.path.insert(0, str(Path(__file__).parent / "inference_fixtures"))
from fake_openai_server import Behaviour, start_server  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FIX = Path(__file__).parent / "inference_fixtures"


def load_config(name="openai_endpoints"):
  spec = importlib.util.spec_from_file_location("c", ROOT / f"configs/llm/{name}.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config()


# The redaction function ------------------------------------------------------------------------------


def test_redact_nested_config():
  c = load_config("smollm2_cpu")
  c.server.env.HF_TOKEN = "hf_abcdefghijklmnopqrstuv"
  c.server.env.my_password = "hunter2hunter2"
  c.server.extra_args = (
    "--api-key",
    "local-secret-1",
    "--hf-token=tok-secret-2",
    "--max-num-seqs",
    "16",
  )
  c.endpoints = (
    {"base_url": "https://alice:pw-secret-3@llm.example.com/v1", "api_key_env": "MY_KEY"},
  )
  c.engine.extra_engine_kwargs = ml_collections.ConfigDict(
    {"hf_overrides": {"accessToken": "nested-secret-4"}}
  )
  dump = redact(json.loads(c.to_json_best_effort()))
  text = json.dumps(dump)
  for s in (
    "hf_abcdefghijklmnopqrstuv",
    "hunter2",
    "local-secret-1",
    "tok-secret-2",
    "pw-secret-3",
    "alice",
    "nested-secret-4",
  ):
    assert s not in text, s
  assert (
    dump["server"]["env"]["HF_TOKEN"] == MASK
    and dump["server"]["env"]["VLLM_CPU_KVCACHE_SPACE"] == "1"
  )
  assert dump["server"]["extra_args"] == [
    "--api-key",
    MASK,
    "--hf-token=" + MASK,
    "--max-num-seqs",
    "16",
  ]
  assert dump["endpoints"][0] == {
    "base_url": "https://***@llm.example.com/v1",
    "api_key_env": "MY_KEY",
  }
  # what is not a credential is kept: counters named *_tokens, the NAME of a key variable, sampling
  assert dump["sampling"] == c.sampling.to_dict() and dump["model"] == c.model.to_dict()
  assert redact({"usage": {"completion_tokens": 3, "prompt_tokens": 9}, "tokenizer": "t"}) == {
    "usage": {"completion_tokens": 3, "prompt_tokens": 9},
    "tokenizer": "t",
  }
  assert redact(c) == dump  # a ConfigDict directly


@pytest.mark.parametrize(
  "text,secret,kept",
  [
    ("https://user:pass-123@host.example/v1", "pass-123", "https://***@host.example/v1"),
    (
      "postgres://u:p4ss@db:5432/x and http://127.0.0.1:8000/v1",
      "p4ss",
      "http://127.0.0.1:8000/v1",
    ),
    ("GET https://h/v1/models?api_key=q-secret&limit=3", "q-secret", "limit=3"),
    (
      "Error code: 401 - {'error': {'message': 'bad Authorization: Bearer sk-proj-AbC123xyz789'}}",
      "AbC123xyz789",
      "Error code: 401",
    ),
    ("headers={'Authorization': 'plain-secret', 'X-Api-Key': 'k-secret'}", "secret", "headers="),
    ("key was sk-live-0123456789abcdef in a sentence", "0123456789abcdef", "in a sentence"),
    (
      "HF_TOKEN=hf_AAAAAAAAAAAAAAAAAAAA VLLM_CPU_KVCACHE_SPACE=1",
      "hf_AAAA",
      "VLLM_CPU_KVCACHE_SPACE=1",
    ),
    ("$ vllm serve m --api-key abc-secret --max-tokens 64", "abc-secret", "--max-tokens 64"),
    ('{"api_key": "json-secret", "max_tokens": 64}', "json-secret", '"max_tokens": 64'),
  ],
)
def test_redact_strings(text, secret, kept):
  out = redact(text)
  assert secret not in out and kept in out and MASK in out


def test_redact_leaves_ordinary_text_alone():
  for s in (
    "The user's interests are: interest 1a2b3c4d, topic 1a2b3c4d",
    "token limit reached",
    "http://127.0.0.1:8000/v1",
    "api_key_env=OPENAI_API_KEY",
    "max_tokens=64 top_k=20",
    "-m vllm.entrypoints.openai.api_server --model /m --served-model-name smol",
  ):
    assert redact(s) == s
  assert redact([1, None, True, ("a", {"token": None})]) == [1, None, True, ["a", {"token": None}]]


# Credentials are named --------------------------------------------------------------------------------


def test_literal_api_key_is_refused_with_the_variable_to_set():
  with pytest.raises(CredentialError, match=r"'api_key'.*api_key_env.*export OPENAI_API_KEY=") as e:
    endpoint_specs(({"base_url": "http://h/v1", "api_key": "sk-literal-0000000"},))
  assert "sk-literal" not in str(e.value)
  c = load_config()
  c.endpoints = ({"base_url": "http://h/v1", "api_key": "EMPTY"},)
  with pytest.raises(CredentialError):
    OpenAIBackend.from_config(c)
  with pytest.raises(ValueError, match="unknown field"):
    endpoint_specs(({"base_url": "http://h/v1", "concurency": 2},))


def test_key_is_read_from_the_named_variable(monkeypatch):
  monkeypatch.delenv("OPENAI_API_KEY", raising=False)
  monkeypatch.delenv("CIKG_UNSET_KEY", raising=False)
  (spec,) = endpoint_specs(({"base_url": "http://h/v1"},))
  assert spec["api_key_env"] == "OPENAI_API_KEY" and resolve_api_key("OPENAI_API_KEY") == "EMPTY"
  monkeypatch.setenv("OPENAI_API_KEY", "from-env")
  assert resolve_api_key("OPENAI_API_KEY") == "from-env"
  (spec,) = endpoint_specs(({"base_url": "http://h/v1", "api_key_env": "CIKG_UNSET_KEY"},))
  with pytest.raises(CredentialError, match="CIKG_UNSET_KEY, which is not set"):
    resolve_api_key(spec["api_key_env"], spec["key_required"])


def test_the_key_is_sent(monkeypatch, tmp_path):
  key = "sk-test-" + secrets.token_hex(12)
  srv, state, url = start_server(Behaviour(require_key=key))
  try:
    c = load_config()
    c.endpoints = ({"base_url": url, "concurrency": 2, "api_key_env": "CIKG_TEST_KEY"},)
    c.model.served_name = "fake-model"
    monkeypatch.setenv("CIKG_TEST_KEY", key)
    b = OpenAIBackend.from_config(c)
    reqs = [
      {
        "custom_id": f"user-{i}",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "fake-model", "messages": [{"role": "user", "content": str(i)}]},
      }
      for i in range(3)
    ]
    s = run_generation(reqs, b, tmp_path, {"model": "m"}, progress=False)
    assert s["ok"] == 3 and state.auth_ok == 3
    assert key not in json.dumps(b.describe())
  finally:
    srv.shutdown()
    srv.server_close()


def test_a_key_echoed_bare_or_in_the_base_url_is_masked_everywhere(monkeypatch, tmp_path, capsys):
  key = "k" + secrets.token_hex(12)  # no known token shape: only its exact value can be masked
  srv, state, url = start_server(Behaviour(require_key="another", echo_key=True))
  try:
    c = load_config()
    root = url.rsplit("/v1", 1)[0]
    c.endpoints = ({"base_url": f"{root}/{key}/v1", "api_key_env": "CIKG_PLAIN_KEY"},)
    c.model.served_name = "fake-model"
    c.client.max_attempts = 1
    monkeypatch.setenv("CIKG_PLAIN_KEY", key)
    reqs = [
      {
        "custom_id": f"user-{i}",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "fake-model", "messages": [{"role": "user", "content": str(i)}]},
      }
      for i in range(2)
    ]
    run_generation(reqs, OpenAIBackend.from_config(c), tmp_path, {"model": "m"}, progress=False)
  finally:
    srv.shutdown()
    srv.server_close()
  assert "credential rejected: ***" in (tmp_path / "failures.jsonl").read_text()
  assert grep_dir(tmp_path, [key]) == []
  out = capsys.readouterr()
  assert key not in out.out + out.err


# Nothing written or printed carries a key -------------------------------------------------------------


def grep_dir(d, needles):
  """(path, needle) for every file under d containing one of the needles."""
  hits = []
  for p in Path(d).rglob("*"):
    if p.is_file():
      data = p.read_bytes()
      hits += [(str(p), n) for n in needles if n.encode() in data]
  return hits


def cli(out, url, *extra):
  return [
    sys.executable,
    "-m",
    "inference.generate",
    f"--config={ROOT / 'configs/llm/openai_endpoints.py'}",
    f"--config.data_dir={FIX}",
    "--config.dataset=tiny",
    "--config.prompt.domain=books",
    f"--config.out_dir={out}",
    "--config.model.served_name=fake-model",
    "--no_progress",
    "--config.client.max_attempts=1",
    f"--config.endpoints={url}",
    *extra,
  ]


def test_a_run_with_a_key_in_the_environment_leaves_no_trace(tmp_path):
  key = "sk-test-" + secrets.token_hex(16)
  server_token = "hf_" + secrets.token_hex(12)
  needles = [key, key[-16:], server_token]
  leaky, _, leaky_url = start_server(
    Behaviour(status=500, echo_auth=True)
  )  # errors quote the header
  good, good_state, good_url = start_server(
    Behaviour(require_key=key, echo_auth=True, fail_first=1)
  )
  env = {**os.environ, "OPENAI_API_KEY": key, "CIKG_TEST_KEY": key, "PYTHONPATH": str(ROOT)}
  out = tmp_path / "run"
  # a token that does end up in the config (server.extra_args) must be masked in the manifest's dump
  extra = f"--config.server.extra_args=('--api-key', '{server_token}')"
  try:
    # 1. every request fails at a server that echoes the Authorization header (default OPENAI_API_KEY)
    r1 = subprocess.run(
      cli(out, f'({{"base_url": "{leaky_url}", "concurrency": 2}},)', extra),
      cwd=ROOT,
      capture_output=True,
      text=True,
      timeout=120,
      env=env,
    )
    assert r1.returncode == 3, r1.stderr[-2000:]
    # 2. the resume, with a named variable, at a server that requires the key
    r2 = subprocess.run(
      cli(
        out,
        f'({{"base_url": "{good_url}", "concurrency": 2, "api_key_env": "CIKG_TEST_KEY"}},)',
        extra,
        "--config.client.max_attempts=2",
      ),
      cwd=ROOT,
      capture_output=True,
      text=True,
      timeout=120,
      env=env,
    )
    assert r2.returncode == 0, r2.stderr[-2000:]
  finally:
    for s in (leaky, good):
      s.shutdown()
      s.server_close()
  assert (
    good_state.auth_ok == 12 + 12
  )  # the key was really sent (12 failed first tries, 12 answers)
  assert grep_dir(out, needles) == []
  for r in (r1, r2):
    assert not [n for n in needles if n in r.stdout + r.stderr]
  failures = (out / "failures.jsonl").read_text()
  assert "Bearer ***" in failures  # the echoed header was recorded, masked
  m = json.loads((out / "manifest.json").read_text())
  assert m["config"]["server"]["extra_args"] == ["--api-key", MASK] and m["done"] == 12
  assert m["backend"]["endpoints"][0]["api_key_env"] == "CIKG_TEST_KEY"


def test_cli_refuses_a_literal_key_and_writes_nothing(tmp_path):
  key = "sk-test-" + secrets.token_hex(16)
  out = tmp_path / "run"
  r = subprocess.run(
    cli(out, f"({{'base_url': 'http://127.0.0.1:9/v1', 'api_key': '{key}', 'concurrency': 2}},)"),
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=120,
    env={**os.environ, "PYTHONPATH": str(ROOT)},
  )
  assert r.returncode == 2
  assert (
    "api_key_env" in r.stderr and "OPENAI_API_KEY" in r.stderr and key not in r.stdout + r.stderr
  )
  assert not out.exists()


def test_failures_manifest_and_results_are_redacted_at_the_runner(tmp_path):
  key = "sk-test-" + secrets.token_hex(16)

  class Leaky:
    def describe(self):
      return {"backend": "x", "engine": {"hf_token": key, "model": "m"}}

    def run(self, requests, emit, stop):
      emit(
        {
          "custom_id": "user-0",
          "ok": False,
          "error": "http_401",
          "errors": [f"http_401: Error code: 401 - {{'detail': 'Authorization: Bearer {key}'}}"],
          "endpoint": f"https://me:{key}@host/v1",
        }
      )
      emit(
        {
          "custom_id": "user-1",
          "ok": True,
          "text": "a, b",
          "finish_reason": "stop",
          "endpoint": f"https://me:{key}@host/v1",
        }
      )
      raise RuntimeError(f"connection to https://me:{key}@host/v1 lost")

  reqs = [
    {
      "custom_id": f"user-{i}",
      "method": "POST",
      "url": "/v1/chat/completions",
      "body": {"model": "m", "messages": [{"role": "user", "content": str(i)}]},
    }
    for i in range(2)
  ]
  info = {"model": "m", "config": {"server": {"env": {"HF_TOKEN": key}}}}
  with pytest.raises(RuntimeError):
    run_generation(reqs, Leaky(), tmp_path, info, progress=False)
  assert grep_dir(tmp_path, [key, key[-16:]]) == []
  m = json.loads((tmp_path / "manifest.json").read_text())
  assert m["runs"][-1]["aborted"] == "RuntimeError: connection to https://***@host/v1 lost"
  assert json.loads((tmp_path / "results.jsonl").read_text())["endpoint"] == "https://***@host/v1"


def test_server_log_and_startup_error_are_redacted(tmp_path):
  key = "sk-test-" + secrets.token_hex(16)
  code = (
    "import sys; print('non-default args: api_key=' + sys.argv[2] + ' hf_token=' + sys.argv[2]); "
    "print('Authorization: Bearer ' + sys.argv[2], flush=True); sys.exit(3)"
  )
  srv = VLLMServer(
    [sys.executable, "-c", code, "--api-key", key],
    "127.0.0.1",
    free_port(),
    "m",
    dict(os.environ),
    tmp_path / "vllm_server.log",
    startup_timeout_s=20,
  )
  with pytest.raises(RuntimeError, match="exited with code 3") as e:
    srv.start()
  log = (tmp_path / "vllm_server.log").read_text()
  assert key not in log and key not in str(e.value)
  assert (
    "--api-key ***" in log
    and "api_key=***" in log
    and "Bearer ***" in log
    and "Bearer ***" in str(e.value)
  )
  assert srv.endpoint().api_key_env == "VLLM_API_KEY" and not srv._pump.is_alive()

"""The OpenAI-compatible client and the runner against a stand-in server on 127.0.0.1 that delays,
fails, answers garbage, or dies mid-run; plus a generate process killed mid-run and resumed."""

import json
from pathlib import Path
import signal
import subprocess
import sys
import time

import pytest

from inference.backends.openai_client import Endpoint, OpenAIBackend, RetryPolicy, split_body
from inference.runner import load_results, run_generation

sys.path.insert(0, str(Path(__file__).parent / "inference_fixtures"))
from fake_openai_server import Behaviour, answer_for, start_server  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FIX = Path(__file__).parent / "inference_fixtures"
INFO = {
  "model": "fake-model",
  "revision": "",
  "prompt_template": "t",
  "prompt_template_hash": "h",
  "sampling": {},
  "seed": 0,
}
FAST = RetryPolicy(max_attempts=4, backoff_base_s=0.01, backoff_max_s=0.05, timeout_s=5.0)


def reqs(n, model="fake-model"):
  return [
    {
      "custom_id": f"user-{i}",
      "method": "POST",
      "url": "/v1/chat/completions",
      "body": {
        "model": model,
        "temperature": 0.0,
        "max_tokens": 16,
        "top_k": 5,
        "messages": [{"role": "user", "content": f"[title {i}]"}],
      },
    }
    for i in range(n)
  ]


@pytest.fixture
def server():
  started = []

  def make(**kw):
    srv, state, url = start_server(Behaviour(**kw))
    started.append(srv)
    return state, url

  yield make
  for s in started:
    s.shutdown()
    s.server_close()


def check_answers(run_dir, requests):
  """Every stored answer is the one for its own request, and each custom_id appears once."""
  rows = [json.loads(line) for line in (Path(run_dir) / "results.jsonl").read_text().splitlines()]
  ids = [r["custom_id"] for r in rows]
  assert len(ids) == len(set(ids))
  by_id = {r["custom_id"]: r for r in requests}
  for r in rows:
    assert r["text"] == answer_for(by_id[r["custom_id"]]["body"]["messages"])
  return rows


def test_split_body_routes_vllm_fields_to_extra_body():
  std, extra = split_body(
    {"model": "m", "temperature": 0, "top_k": 5, "structured_outputs": {"json": {}}}
  )
  assert std == {"model": "m", "temperature": 0} and extra == {
    "top_k": 5,
    "structured_outputs": {"json": {}},
  }


def test_bounded_concurrency_and_correct_pairing(server, tmp_path):
  state, url = server(delay_s=0.05)
  b = OpenAIBackend([Endpoint(url, concurrency=3)], FAST)
  rq = reqs(24)
  s = run_generation(rq, b, tmp_path, INFO, progress=False)
  assert s["ok"] == 24 and 2 <= state.max_in_flight <= 3
  check_answers(tmp_path, rq)


def test_retries_server_errors_garbage_and_empty_choices(server, tmp_path):
  state, url = server(fail_first=1, garbage_first=1, no_choices_first=1)
  b = OpenAIBackend([Endpoint(url, concurrency=4)], FAST)
  rq = reqs(10)
  s = run_generation(rq, b, tmp_path, INFO, progress=False)
  assert s["ok"] == 10 and state.requests == 40
  rows = check_answers(tmp_path, rq)
  assert {r["attempts"] for r in rows} == {4}


def test_timeouts_are_recorded_as_failures(server, tmp_path):
  _, url = server(delay_s=1.0)
  b = OpenAIBackend([Endpoint(url, concurrency=4)], RetryPolicy(2, 0.01, 0.02, timeout_s=0.2))
  s = run_generation(reqs(4), b, tmp_path, INFO, progress=False)
  assert s["ok"] == 0 and s["failure_reasons"] == {"timeout": 4}
  f = [json.loads(line) for line in (tmp_path / "failures.jsonl").read_text().splitlines()]
  assert all(r["attempts"] == 2 and r["errors"][0].startswith("timeout") for r in f)


def test_client_errors_are_not_retried_and_dead_model_aborts(server, tmp_path):
  state, url = server(status=400)
  b = OpenAIBackend([Endpoint(url, concurrency=1)], FAST)
  s = run_generation(reqs(3), b, tmp_path / "a", INFO, progress=False)
  assert s["failure_reasons"] == {"http_400": 3} and state.requests == 3
  _, url2 = server()
  b2 = OpenAIBackend([Endpoint(url2, concurrency=2)], FAST)
  s2 = run_generation(
    reqs(50, model="wrong-name"),
    b2,
    tmp_path / "b",
    INFO,
    max_consecutive_failures=4,
    progress=False,
  )
  assert "consecutive failures (last: http_404)" in s2["aborted"] and s2["failed"] < 10


def test_rate_limit(server, tmp_path):
  _, url = server()
  b = OpenAIBackend([Endpoint(url, concurrency=4)], FAST, rate_limit_rps=40)
  t0 = time.monotonic()
  run_generation(reqs(12), b, tmp_path, INFO, progress=False)
  assert time.monotonic() - t0 >= 11 / 40 - 0.02


def test_fan_out_over_endpoints(server, tmp_path):
  s1, u1 = server(delay_s=0.02)
  s2, u2 = server(delay_s=0.02)
  b = OpenAIBackend([Endpoint(u1, concurrency=2), Endpoint(u2, concurrency=2)], FAST)
  rq = reqs(30)
  run_generation(rq, b, tmp_path, INFO, progress=False)
  rows = check_answers(tmp_path, rq)
  assert len(rows) == 30 and s1.answered > 3 and s2.answered > 3 and s1.answered + s2.answered == 30
  assert {r["endpoint"] for r in rows} == {u1, u2}


def _spawn_server(tmp_path, *args):
  port_file = tmp_path / f"port{time.monotonic_ns()}"
  p = subprocess.Popen(
    [sys.executable, str(FIX / "fake_openai_server.py"), "--port_file", str(port_file), *args]
  )
  for _ in range(200):
    if port_file.exists():
      return p, f"http://127.0.0.1:{port_file.read_text()}/v1"
    time.sleep(0.02)
  p.kill()
  raise RuntimeError("fake server did not start")


def test_server_dies_mid_run_then_resume(tmp_path):
  proc, url = _spawn_server(tmp_path, "--die_after", "10", "--delay_s", "0.01")
  rq = reqs(40)
  try:
    b = OpenAIBackend([Endpoint(url, concurrency=2)], RetryPolicy(2, 0.01, 0.02, 2.0))
    s = run_generation(rq, b, tmp_path / "run", INFO, max_consecutive_failures=4, progress=False)
  finally:
    proc.kill()
    proc.wait()
  assert proc.returncode is not None and s["aborted"] and 9 <= s["ok"] <= 11
  first = set(load_results(tmp_path / "run"))
  proc2, url2 = _spawn_server(tmp_path)
  try:
    b2 = OpenAIBackend([Endpoint(url2, concurrency=2)], FAST)
    s2 = run_generation(rq, b2, tmp_path / "run", INFO, progress=False)
  finally:
    proc2.kill()
    proc2.wait()
  assert s2["already_done"] == len(first) and s2["remaining"] == 0
  assert len(check_answers(tmp_path / "run", rq)) == 40


def test_generate_process_killed_mid_run_then_resumed(tmp_path):
  """SIGKILL `python -m inference.generate` mid-run; the rerun finishes with nothing lost or duplicated."""
  proc, url = _spawn_server(tmp_path, "--delay_s", "0.15")
  out = tmp_path / "gen"
  cmd = [
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
    f'--config.endpoints=({{"base_url": "{url}", "concurrency": 1}},)',
  ]
  try:
    g = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    res = out / "results.jsonl"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and (
      not res.exists() or len(res.read_text().splitlines()) < 3
    ):
      time.sleep(0.05)
    g.send_signal(signal.SIGKILL)
    g.wait()
    n_before = len(res.read_text().splitlines())
    assert 3 <= n_before < 12
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr[-2000:]
  finally:
    proc.kill()
    proc.wait()
  rq = [json.loads(line) for line in (out / "requests.jsonl").read_text().splitlines()]
  assert len(rq) == 12
  assert len(check_answers(out, rq)) == 12
  m = json.loads((out / "manifest.json").read_text())
  assert (
    m["runs"][-1]["already_done"] >= n_before
    and m["done"] == 12
    and m["finish_reasons"] == {"stop": 12}
  )

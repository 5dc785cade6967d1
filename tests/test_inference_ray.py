"""The `ray_data` backend on a local Ray cluster (127.0.0.1, 2 logical CPUs, no dashboard): Ray Data's HTTP
processor (`ray.data.llm.HttpRequestProcessorConfig` + `build_processor`) against the stand-in OpenAI
server of the fault tests; answers, resume, failures, manifest, and `inference.generate` end to end.

Needs Ray (`pip install -e ".[ray]"`); skipped with that reason where it is absent. The same backend with
Ray's vLLM engine processor and a real model is in tests/test_inference_ray_vllm.py (`-m vllm`).
"""

import json
from pathlib import Path
import sys

import pytest

ray = pytest.importorskip(
  "ray", reason="Ray is not installed: pip install -e '.[ray]' (the ray_data backend)"
)
pytest.importorskip("ray.data.llm", reason="ray.data.llm missing: pip install -e '.[ray]'")

from inference.backends.openai_client import Endpoint  # noqa: E402
from inference.backends.ray_data import RayDataBackend  # noqa: E402
from inference.runner import load_results, run_generation  # noqa: E402

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
N = 36


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


@pytest.fixture(scope="module", autouse=True)
def cluster():
  """One local Ray cluster for the module (started once: ~5 s)."""
  ray.init(
    num_cpus=2,
    include_dashboard=False,
    _node_ip_address="127.0.0.1",
    log_to_driver=False,
    ignore_reinit_error=True,
  )
  yield
  ray.shutdown()


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


def backend(*urls, **kw):
  kw = {
    "concurrency": 1,
    "batch_size": 8,
    "max_attempts": 2,
    "backoff_base_s": 0.01,
    "timeout_s": 10.0,
    "cpu_stage_num_cpus": 0.25,
    **kw,
  }
  return RayDataBackend("http", endpoints=[Endpoint(u) for u in urls], **kw).start()


def check_answers(run_dir, requests):
  rows = [json.loads(line) for line in (Path(run_dir) / "results.jsonl").read_text().splitlines()]
  ids = [r["custom_id"] for r in rows]
  assert len(ids) == len(set(ids))
  by_id = {r["custom_id"]: r for r in requests}
  for r in rows:
    assert r["ok"] and r["text"] == answer_for(by_id[r["custom_id"]]["body"]["messages"])
    assert (
      r["finish_reason"] == "stop" and r["usage"]["completion_tokens"] == 8 and r["request_sha256"]
    )
  return rows


def test_ray_http_processor_answers_then_resume_skips_done(server, tmp_path):
  state, url = server()
  rq = reqs(N)
  s1 = run_generation(rq[:20], backend(url), tmp_path, INFO, progress=False)
  assert s1["ok"] == 20 and s1["failed"] == 0 and state.answered == 20
  s2 = run_generation(
    rq, backend(url), tmp_path, INFO, progress=False
  )  # the dataset holds the 16 left
  assert (
    s2["already_done"] == 20 and s2["ok"] == 16 and s2["remaining"] == 0 and state.requests == N
  )
  assert len(check_answers(tmp_path, rq)) == N
  m = json.loads((tmp_path / "manifest.json").read_text())
  b = m["backend"]
  assert (
    b["backend"] == "ray_data" and b["processor"] == "http" and b["ray_version"] == ray.__version__
  )
  assert b["cluster"]["nodes"] == 1 and b["cluster"]["CPU"] == 2 and b["batch_size"] == 8
  assert (
    m["runs"][-1]["requests_per_s"] > 0 and m["done"] == N and m["finish_reasons"] == {"stop": N}
  )
  s3 = run_generation(rq, backend(url), tmp_path, INFO, progress=False)  # all done: nothing sent
  assert s3["already_done"] == N and state.requests == N


def test_ray_http_processor_fans_out_over_endpoints(server, tmp_path):
  s1, u1 = server(delay_s=0.01)
  s2, u2 = server(delay_s=0.01)
  rq = reqs(N)
  s = run_generation(rq, backend(u1, u2), tmp_path, INFO, progress=False)
  assert s["ok"] == N and s1.answered == N // 2 and s2.answered == N // 2
  check_answers(tmp_path, rq)


def test_ray_http_failures_recorded_with_reasons_and_redacted(server, tmp_path):
  _, url = server(status=400, echo_auth=True)
  rq = reqs(6)
  s = run_generation(rq, backend(url), tmp_path / "a", INFO, progress=False)
  assert s["ok"] == 0 and s["failure_reasons"] == {"http_error": 6}
  text = (tmp_path / "a" / "failures.jsonl").read_text()
  f = [json.loads(line) for line in text.splitlines()]
  assert {r["custom_id"] for r in f} == {r["custom_id"] for r in rq}
  assert all(r["errors"][0].startswith("http_error: forced") for r in f)
  # A garbage (non-JSON) answer fails the whole Ray task of its block (Ray's HTTP stage raises): its rows
  # are dropped by Ray Data (max_errored_blocks) and recorded as failures; reruns redo exactly them.
  state, url2 = server(garbage_first=1)
  s = run_generation(rq, backend(url2, batch_size=3), tmp_path / "b", INFO, progress=False)
  assert s["ok"] + s["failed"] == 6 and s["failed"] >= 1
  assert set(s["failure_reasons"]) == {"missing_from_output"}
  done = s["ok"]
  for _ in range(6):
    s = run_generation(rq, backend(url2, batch_size=3), tmp_path / "b", INFO, progress=False)
    assert s["already_done"] == done and set(s["failure_reasons"]) <= {"missing_from_output"}
    done += s["ok"]
    if not s["remaining"]:
      break
  assert s["remaining"] == 0 and done == 6
  check_answers(tmp_path / "b", rq)


def test_generate_ray_data_http_on_the_tiny_dataset(server, tmp_path):
  """`inference.generate` with --config.backend=ray_data --config.ray.processor=http, in-process."""
  from configs.llm import openai_endpoints
  from inference.generate import generate

  state, url = server()
  c = openai_endpoints.get_config()
  c.data_dir, c.dataset, c.prompt.domain, c.out_dir = (
    str(FIX),
    "tiny",
    "books",
    str(tmp_path / "gen"),
  )
  c.model.served_name, c.backend = "fake-model", "ray_data"
  c.ray.processor, c.ray.batch_size = "http", 4
  c.endpoints = ({"base_url": url, "concurrency": 1},)
  assert generate(c, progress=False) == 0
  rq = [json.loads(line) for line in (tmp_path / "gen" / "requests.jsonl").read_text().splitlines()]
  assert len(rq) == 12 and len(load_results(tmp_path / "gen")) == 12
  check_answers(tmp_path / "gen", rq)
  m = json.loads((tmp_path / "gen" / "manifest.json").read_text())
  assert (
    m["backend"]["backend"] == "ray_data"
    and m["backend"]["endpoints"][0]["api_key_env"] == "OPENAI_API_KEY"
  )
  assert (
    generate(c, progress=False) == 0 and state.requests == 12
  )  # rerun: all answered, nothing sent

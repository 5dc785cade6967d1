"""Durable runner: append-only results, resume, no duplicates, tail repair, manifest, abort on failures."""

import json
import threading

import pytest

from inference.runner import ResultStore, RunDirError, load_results, run_generation

INFO = {
  "model": "m",
  "revision": "r",
  "prompt_template": "release-v1",
  "prompt_template_hash": "h",
  "sampling": {"temperature": 0.0},
  "seed": 1,
}


def reqs(n):
  return [
    {
      "custom_id": f"user-{i}",
      "method": "POST",
      "url": "/v1/chat/completions",
      "body": {"model": "m", "messages": [{"role": "user", "content": str(i)}]},
    }
    for i in range(n)
  ]


class FakeBackend:
  """Answers in order; can fail some ids, or raise after `crash_after` answers (a killed run)."""

  def __init__(self, fail=(), crash_after=None, finish="stop"):
    self.fail, self.crash_after, self.finish, self.seen = set(fail), crash_after, finish, []

  def describe(self):
    return {"backend": "fake"}

  def run(self, requests, emit, stop):
    for k, r in enumerate(requests):
      if stop.is_set():
        return
      if self.crash_after is not None and k == self.crash_after:
        raise KeyboardInterrupt("killed")
      self.seen.append(r["custom_id"])
      if r["custom_id"] in self.fail:
        emit({"custom_id": r["custom_id"], "ok": False, "error": "http_500", "attempts": 3})
      else:
        emit(
          {
            "custom_id": r["custom_id"],
            "ok": True,
            "text": "a, b",
            "finish_reason": self.finish,
            "usage": {"completion_tokens": 3},
            "latency_s": 0.01,
          }
        )


def lines(path):
  return [json.loads(line) for line in path.read_text().splitlines()]


def test_resume_skips_done_and_never_duplicates(tmp_path):
  with pytest.raises(KeyboardInterrupt):
    run_generation(reqs(10), FakeBackend(crash_after=4), tmp_path, INFO, progress=False)
  assert [r["custom_id"] for r in lines(tmp_path / "results.jsonl")] == [
    f"user-{i}" for i in range(4)
  ]
  m = json.loads((tmp_path / "manifest.json").read_text())
  assert m["runs"][-1]["aborted"].startswith("KeyboardInterrupt") and m["remaining"] == 6
  b = FakeBackend()
  s = run_generation(reqs(10), b, tmp_path, INFO, progress=False)
  assert (
    b.seen == [f"user-{i}" for i in range(4, 10)] and s["already_done"] == 4 and s["remaining"] == 0
  )
  ids = [r["custom_id"] for r in lines(tmp_path / "results.jsonl")]
  assert sorted(ids) == sorted(f"user-{i}" for i in range(10)) and len(ids) == len(set(ids))
  b3 = FakeBackend()
  run_generation(reqs(10), b3, tmp_path, INFO, progress=False)
  assert b3.seen == []


def test_failures_recorded_and_retried_next_run(tmp_path):
  s = run_generation(reqs(5), FakeBackend(fail={"user-2"}), tmp_path, INFO, progress=False)
  assert s["failed"] == 1 and s["failure_reasons"] == {"http_500": 1} and s["remaining"] == 1
  f = lines(tmp_path / "failures.jsonl")
  assert f[0]["custom_id"] == "user-2" and f[0]["error"] == "http_500"
  b = FakeBackend()
  run_generation(reqs(5), b, tmp_path, INFO, progress=False)
  assert b.seen == ["user-2"] and len(load_results(tmp_path)) == 5


def test_manifest_contents(tmp_path):
  run_generation(reqs(3), FakeBackend(finish="length"), tmp_path, INFO, progress=False)
  m = json.loads((tmp_path / "manifest.json").read_text())
  for k in (
    "model",
    "revision",
    "sampling",
    "seed",
    "prompt_template_hash",
    "fingerprint",
    "backend",
  ):
    assert k in m
  assert m["finish_reasons"] == {"length": 3} and m["done"] == 3
  r = m["runs"][0]
  assert r["ok"] == 3 and r["requests_per_s"] > 0 and r["latency_s"]["p50"] == 0.01


def test_other_configuration_is_refused(tmp_path):
  run_generation(reqs(2), FakeBackend(), tmp_path, INFO, progress=False)
  with pytest.raises(RunDirError, match="another configuration"):
    run_generation(
      reqs(2), FakeBackend(), tmp_path, {**INFO, "sampling": {"temperature": 1.0}}, progress=False
    )


def test_partial_last_line_is_repaired(tmp_path):
  run_generation(reqs(3), FakeBackend(), tmp_path, INFO, progress=False)
  with open(tmp_path / "results.jsonl", "a") as f:
    f.write('{"custom_id": "user-3", "ok": tr')  # killed mid-write
  assert "user-3" not in load_results(tmp_path)
  s = run_generation(reqs(5), FakeBackend(), tmp_path, INFO, progress=False)
  assert s["repaired_bytes"] > 0 and s["ok"] == 2
  ids = [r["custom_id"] for r in lines(tmp_path / "results.jsonl")]
  assert ids == [f"user-{i}" for i in range(5)]


def test_store_ignores_duplicate_add(tmp_path):
  st = ResultStore(tmp_path / "r.jsonl")
  assert st.add({"custom_id": "user-1", "ok": True}) and not st.add(
    {"custom_id": "user-1", "ok": True}
  )
  st.close()
  assert len(lines(tmp_path / "r.jsonl")) == 1


def test_abort_after_consecutive_failures(tmp_path):
  fail = {f"user-{i}" for i in range(3, 20)}
  s = run_generation(
    reqs(20), FakeBackend(fail=fail), tmp_path, INFO, max_consecutive_failures=5, progress=False
  )
  assert s["aborted"].startswith("5 consecutive failures") and s["ok"] == 3 and s["failed"] == 5


def test_two_runners_on_one_dir_are_refused(tmp_path):
  started, release = threading.Event(), threading.Event()

  class Slow(FakeBackend):
    def run(self, requests, emit, stop):
      started.set()
      release.wait(5)

  t = threading.Thread(
    target=run_generation, args=(reqs(1), Slow(), tmp_path, INFO), kwargs={"progress": False}
  )
  t.start()
  started.wait(5)
  try:
    with pytest.raises(RunDirError, match="in use by another generation run"):
      run_generation(reqs(1), FakeBackend(), tmp_path, INFO, progress=False)
  finally:
    release.set()
    t.join()

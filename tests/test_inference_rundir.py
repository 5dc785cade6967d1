"""A run directory answers one set of requests: a resume with another dataset, prompt, split or request
content is refused before anything in it is touched (item 8), and the run lock is taken before anything
is written, so a refused second runner leaves the first one's files alone (item 9)."""

import importlib.util
import json
import logging
import os
from pathlib import Path
import shutil
import subprocess
import sys
import time

import pytest

from inference import generate
from inference.runner import RunDirError, run_generation

sys.path.insert(0, str(Path(__file__).parent / "inference_fixtures"))
from fake_openai_server import Behaviour, start_server  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FIX = Path(__file__).parent / "inference_fixtures"


@pytest.fixture
def data(tmp_path):
  """Two small datasets: `tiny` and `tiny_b` (same users and items, other titles)."""
  d = tmp_path / "data"
  shutil.copytree(FIX / "tiny", d / "tiny")
  shutil.copytree(FIX / "tiny", d / "tiny_b")
  p = d / "tiny_b" / "item_list.txt"
  p.write_text(p.read_text().replace("Book_", "Other_book_"))
  return d


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


def config(data, out, url, **overrides):
  spec = importlib.util.spec_from_file_location("c", ROOT / "configs/llm/openai_endpoints.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  c = mod.get_config()
  c.data_dir, c.dataset, c.prompt.domain, c.out_dir = str(data), "tiny", "books", str(out)
  c.model.served_name = "fake-model"
  c.endpoints = ({"base_url": url, "concurrency": 2},)
  c.client.max_attempts, c.client.backoff_base_s = 2, 0.01
  for k, v in overrides.items():
    node = c
    *path, last = k.split(".")
    for p in path:
      node = node[p]
    node[last] = v
  return c


def snapshot(out):
  return {
    p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(out.iterdir()) if p.is_file()
  }


def test_dataset_switch_on_a_finished_dir_is_refused(data, server, tmp_path):
  """Before: `--config.dataset=tiny_b` on tiny's finished dir printed "all 12 requests already answered"."""
  _, url = server()
  out = tmp_path / "run"
  assert generate.generate(config(data, out, url), progress=False) == 0
  before = snapshot(out)
  with pytest.raises(
    RunDirError,
    match=r'another configuration \(dataset "tiny" -> "tiny_b"\).*another --config.out_dir',
  ):
    generate.generate(config(data, out, url, dataset="tiny_b"), progress=False)
  assert snapshot(out) == before


@pytest.mark.parametrize(
  "key,value,named",
  [
    ("dataset", "tiny_b", "dataset"),
    ("prompt.n_items", 3, "prompt.n_items"),
    ("prompt.domain", "movies", "prompt.domain"),
    ("split.split_seed", 7, "split.split_seed"),
    ("sampling.max_tokens", 9, "sampling.max_tokens"),
  ],
)
def test_other_requests_on_a_partial_dir_are_refused_not_mixed(
  data, server, tmp_path, key, value, named
):
  _, url = server()
  out = tmp_path / "run"
  assert generate.generate(config(data, out, url, limit=5), progress=False) == 0
  before = snapshot(out)
  with pytest.raises(RunDirError, match=named):
    generate.generate(config(data, out, url, **{key: value}), progress=False)
  assert snapshot(out) == before
  assert len((out / "results.jsonl").read_text().splitlines()) == 5


def test_changed_data_files_under_the_same_config_are_refused(data, server, tmp_path):
  """Same recorded configuration, other request content (titles edited): caught by request_sha256."""
  _, url = server()
  out = tmp_path / "run"
  generate.generate(config(data, out, url, limit=4), progress=False)
  rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
  assert all(len(r["request_sha256"]) == 64 for r in rows)
  p = data / "tiny" / "item_list.txt"
  p.write_text(p.read_text().replace("Title", "Renamed"))
  before = snapshot(out)
  with pytest.raises(RunDirError, match="answers to other requests: 4 answered users"):
    generate.generate(config(data, out, url), progress=False)
  assert snapshot(out) == before


def test_a_larger_limit_resumes_and_the_shortcut_follows_the_check(data, server, tmp_path, caplog):
  caplog.set_level(logging.INFO, logger="cikg_jax")
  state, url = server()
  out = tmp_path / "run"
  generate.generate(config(data, out, url, limit=5), progress=False)
  generate.generate(config(data, out, url), progress=False)
  m = json.loads((out / "manifest.json").read_text())
  assert m["runs"][-1]["already_done"] == 5 and m["done"] == 12 and state.answered == 12
  assert generate.generate(config(data, out, url, limit=8), progress=False) == 0
  assert "all 8 requests already answered" in caplog.text


def test_import_batch_output_is_checked_and_hashed(data, server, tmp_path):
  _, url = server()
  out = tmp_path / "run"
  c = config(data, out, url)
  generate.generate(c, requests_only=True)
  reqs = [json.loads(line) for line in (out / "requests.jsonl").read_text().splitlines()]
  batch = tmp_path / "batch_out.jsonl"
  batch.write_text(
    "".join(
      json.dumps(
        {
          "custom_id": r["custom_id"],
          "response": {
            "status_code": 200,
            "body": {"choices": [{"message": {"content": "a, b"}, "finish_reason": "stop"}]},
          },
        }
      )
      + "\n"
      for r in reqs[:3]
    )
  )
  generate.generate(c, import_batch_output=str(batch))
  rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
  assert len(rows) == 3 and all(r["request_sha256"] for r in rows)
  with pytest.raises(RunDirError, match="dataset"):
    generate.generate(config(data, out, url, dataset="tiny_b"), import_batch_output=str(batch))


# Answers stored before requests were hashed ------------------------------------------------------------

INFO = {
  "model": "m",
  "revision": "r",
  "prompt_template": "release-v1",
  "prompt_template_hash": "h",
  "sampling": {"temperature": 0.0},
  "dataset": "d",
  "prompt": {"n_items": 30},
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


class Backend:
  def __init__(self):
    self.seen = []

  def describe(self):
    return {"backend": "fake"}

  def run(self, requests, emit, stop):
    for r in requests:
      self.seen.append(r["custom_id"])
      emit({"custom_id": r["custom_id"], "ok": True, "text": "a", "finish_reason": "stop"})


def strip_hashes(run_dir):
  p = run_dir / "results.jsonl"
  rows = [json.loads(line) for line in p.read_text().splitlines()]
  p.write_text(
    "".join(json.dumps({k: v for k, v in r.items() if k != "request_sha256"}) + "\n" for r in rows)
  )


def test_legacy_answers_are_kept_only_when_the_recorded_configuration_matches(tmp_path):
  run_generation(reqs(3), Backend(), tmp_path, INFO, progress=False)
  strip_hashes(tmp_path)
  b = Backend()
  s = run_generation(reqs(4), b, tmp_path, INFO, progress=False)  # same fingerprint: kept
  assert b.seen == ["user-3"] and s["already_done"] == 3
  with pytest.raises(RunDirError, match=r"prompt.n_items 30 -> 5"):
    run_generation(reqs(4), Backend(), tmp_path, {**INFO, "prompt": {"n_items": 5}}, progress=False)
  legacy_manifest = json.loads((tmp_path / "manifest.json").read_text())
  del legacy_manifest["prompt"]  # an old manifest: prompt only inside its config dump
  legacy_manifest["config"] = {"prompt": {"n_items": 30}}
  (tmp_path / "manifest.json").write_text(json.dumps(legacy_manifest))
  assert run_generation(reqs(4), Backend(), tmp_path, INFO, progress=False)["already_done"] == 4
  (tmp_path / "manifest.json").unlink()
  with pytest.raises(RunDirError, match="no request_sha256 and there is no manifest.json"):
    run_generation(reqs(4), Backend(), tmp_path, INFO, progress=False)


def test_a_changed_request_is_refused_at_the_runner(tmp_path):
  run_generation(reqs(3), Backend(), tmp_path, INFO, progress=False)
  other = reqs(3)
  other[1]["body"]["messages"][0]["content"] = "something else"
  with pytest.raises(
    RunDirError, match=r"1 answered users now get a different request \(e.g. user-1\)"
  ):
    run_generation(other, Backend(), tmp_path, INFO, progress=False)


# Two runners ----------------------------------------------------------------------------------------


def cli(data, out, url, *extra):
  return [
    sys.executable,
    "-m",
    "inference.generate",
    f"--config={ROOT / 'configs/llm/openai_endpoints.py'}",
    f"--config.data_dir={data}",
    "--config.dataset=tiny",
    "--config.prompt.domain=books",
    f"--config.out_dir={out}",
    "--config.model.served_name=fake-model",
    "--no_progress",
    f'--config.endpoints=({{"base_url": "{url}", "concurrency": 1}},)',
    *extra,
  ]


def test_a_second_runner_is_refused_before_writing_anything(data, server, tmp_path):
  """Before: the refused second runner had already replaced requests.jsonl (and repaired results.jsonl)."""
  _, url = server(delay_s=1.0)
  out = tmp_path / "run"
  first = subprocess.Popen(
    cli(data, out, url), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
  )
  try:
    res = out / "results.jsonl"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (res.exists() and res.read_text().count("\n") >= 1):
      time.sleep(0.05)
    assert res.exists(), (
      first.stderr.read().decode()[-2000:] if first.poll() is not None else "no results"
    )
    req = out / "requests.jsonl"
    before = (req.read_bytes(), req.stat().st_mtime_ns)
    second = subprocess.run(
      cli(data, out, url, "--config.prompt.n_items=3"),
      cwd=ROOT,
      capture_output=True,
      text=True,
      timeout=120,
    )
    assert first.poll() is None, "the first runner finished too early for this test"
    assert second.returncode == 2 and "is in use by another generation run" in second.stderr
    assert (req.read_bytes(), req.stat().st_mtime_ns) == before
    assert not (out / "requests.jsonl.tmp").exists()
  finally:
    first.kill()
    first.wait()


def test_cli_refusal_is_one_line(data, server, tmp_path):
  _, url = server()
  out = tmp_path / "run"
  generate.generate(config(data, out, url), progress=False)
  before = snapshot(out)
  r = subprocess.run(
    cli(data, out, url, "--config.dataset=tiny_b"),
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=120,
    env={**os.environ, "PYTHONPATH": str(ROOT)},
  )
  assert r.returncode == 2, r.stderr[-2000:]
  err = [line for line in r.stderr.splitlines() if line.startswith("error:")]
  assert (
    len(err) == 1
    and 'dataset "tiny" -> "tiny_b"' in err[0]
    and "another --config.out_dir" in err[0]
  )
  assert "Traceback" not in r.stderr and snapshot(out) == before


@pytest.mark.parametrize("damage", ["broken middle line", "record without custom_id", "manifest"])
def test_a_damaged_answers_file_or_manifest_is_refused_naming_it(tmp_path, damage):
  run_generation(reqs(3), Backend(), tmp_path, INFO, progress=False)
  res, manifest = tmp_path / "results.jsonl", tmp_path / "manifest.json"
  lines = res.read_text().splitlines(keepends=True)
  if damage == "broken middle line":
    res.write_text(lines[0] + lines[1][:20] + "\n" + lines[2])
    where = rf"{res}:2: not valid JSON"
  elif damage == "record without custom_id":
    res.write_text(lines[0] + '{"ok": true}\n' + lines[2])
    where = rf"{res}: record 2 has no custom_id"
  else:
    manifest.write_text(manifest.read_text()[:-5])
    where = rf"{manifest}: not valid JSON"
  before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
  with pytest.raises(RunDirError, match=where):
    run_generation(reqs(3), Backend(), tmp_path, INFO, progress=False)
  after = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
  assert after == before

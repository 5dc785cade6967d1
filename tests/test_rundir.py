"""The run-directory library shared by training, the LLM runner and the experiment runner: the
lock, fsynced atomic writes, append-only logs and their torn last line, the configuration diff."""

import json
import os

import pytest

from cikg_jax.training import rundir
from inference import runner as llm_runner


def _fsynced(monkeypatch):
  """Records the path of every fsynced file or directory."""
  seen = []
  real = os.fsync

  def fsync(fd):
    seen.append(os.readlink(f"/proc/self/fd/{fd}"))
    return real(fd)

  monkeypatch.setattr(os, "fsync", fsync)
  return seen


class _Backend:
  def describe(self):
    return {"kind": "fake"}

  def run(self, requests, emit, stop):
    for r in requests:
      emit({"custom_id": r["custom_id"], "ok": True, "text": "a\u2028b", "finish_reason": "stop"})


def _requests(n):
  return [
    {
      "custom_id": f"user-{i}",
      "method": "POST",
      "url": "/v1/chat/completions",
      "body": {"messages": [{"role": "user", "content": f"q{i}"}]},
    }
    for i in range(n)
  ]


def test_the_llm_runner_fsyncs_its_manifest_answers_and_directory(tmp_path, monkeypatch):
  seen = _fsynced(monkeypatch)
  llm_runner.run_generation(_requests(2), _Backend(), tmp_path, {"model": "m"}, progress=False)
  assert str(tmp_path / "manifest.json") in {p.split(".json.")[0] + ".json" for p in seen}
  assert seen.count(str(tmp_path / "results.jsonl")) == 2  # each answer before the next
  assert str(tmp_path) in seen  # the new files' directory entries
  # an answer's text may hold line separators other than \n: read back whole
  assert llm_runner.load_results(tmp_path)["user-0"]["text"] == "a\u2028b"


def test_a_failed_append_names_the_file_and_leaves_no_torn_line(tmp_path, monkeypatch):
  store = llm_runner.ResultStore(tmp_path / "results.jsonl")
  store.add({"custom_id": "a", "ok": True, "text": "x"})
  before = (tmp_path / "results.jsonl").read_bytes()
  real = os.fsync

  def full(fd):
    raise OSError(28, "No space left on device")

  monkeypatch.setattr(os, "fsync", full)
  with pytest.raises(
    llm_runner.RunDirError,
    match=rf"^{tmp_path / 'results.jsonl'}: cannot write \(No space left on device\); free space",
  ):
    store.add({"custom_id": "b", "ok": True, "text": "y"})
  monkeypatch.setattr(os, "fsync", real)
  store.close()
  assert (tmp_path / "results.jsonl").read_bytes() == before


def test_a_lock_without_a_pid_file_writes_nothing_and_survives_removed_files(tmp_path):
  (tmp_path / "f").write_text("x")
  before = sorted(os.listdir(tmp_path))
  with rundir.hold(str(tmp_path), holder="generation run", hint="wait"):
    assert sorted(os.listdir(tmp_path)) == before
    os.remove(tmp_path / "f")
    with pytest.raises(
      rundir.RunError, match=rf"^{tmp_path} is in use by another generation run: "
    ):
      with rundir.hold(str(tmp_path), holder="generation run", hint="wait"):
        pass
  with rundir.hold(str(tmp_path), holder="generation run", hint="wait"):  # released
    pass


def test_a_file_can_be_the_lock(tmp_path):
  journal = tmp_path / "study.journal"
  journal.write_text("")
  with rundir.hold(str(journal), holder="tuner", hint="wait"):
    with pytest.raises(rundir.RunError, match="study.journal is in use by another tuner: wait"):
      with rundir.hold(str(journal), holder="tuner", hint="wait"):
        pass


def test_repair_tail_and_complete_lines_drop_only_a_torn_last_line(tmp_path):
  p = tmp_path / "log.jsonl"
  p.write_bytes(b'{"a": 1}\n{"b": "x\xe2\x80\xa8y"}\n{"c": ')
  assert rundir.complete_lines(str(p)) == ['{"a": 1}', '{"b": "x\u2028y"}']
  assert rundir.repair_tail(str(p)) == len(b'{"c": ')
  assert p.read_bytes().endswith(b'y"}\n') and rundir.repair_tail(str(p)) == 0
  assert rundir.complete_lines(str(tmp_path / "missing")) == []
  p.write_bytes(b'{"a": "\xff"}\n')
  with pytest.raises(ValueError, match=rf"^{p}: not UTF-8"):
    rundir.complete_lines(str(p))


def test_differences_name_each_key_with_both_values():
  stored = rundir.flatten({"prompt": {"n_items": 30, "domain": "books"}, "seed": 1})
  now = rundir.flatten({"prompt": {"n_items": 5, "domain": "books"}, "model": "m" * 50})
  assert rundir.differences(stored, now, ignore=frozenset({"seed"})) == [
    'model (absent) -> "' + "m" * 36 + "...",
    "prompt.n_items 30 -> 5",
  ]
  assert llm_runner.fingerprint_diff({"dataset": "a"}, {"dataset": "b"}) == ['dataset "a" -> "b"']


def test_json_written_atomically_keeps_the_old_content_on_failure(tmp_path, monkeypatch):
  p = tmp_path / "manifest.json"
  rundir.write_json(str(p), {"v": 1})
  monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(OSError(5, "I/O error")))
  with pytest.raises(rundir.RunError, match=rf"^{p}: cannot write \(I/O error\)"):
    rundir.write_json(str(p), {"v": 2})
  assert json.loads(p.read_text()) == {"v": 1} and os.listdir(tmp_path) == ["manifest.json"]

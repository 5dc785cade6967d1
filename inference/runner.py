"""Durable, resumable generation: results appended as they arrive, reruns skip what is done.

Files in the run directory:
  results.jsonl   one line per successfully answered custom_id (never two), flushed + fsynced per
                  line, with the `request_sha256` of the request it answers;
  failures.jsonl  one line per request that failed all its attempts in some run (reason, errors);
  manifest.json   what was run (model, revision, endpoints, sampling, seed, template hash) and
                  per-run counts, finish reasons and timings.
A run killed at any point loses only answers still in flight; a partial last line (killed mid-write)
is cut off on the next open. A lock on the directory keeps two runners off it; take it (`RunDir`)
before writing anything there. Locking, the fsynced writes and the configuration diff are the
run-directory library's (cikg_jax.training.rundir), shared with training and the experiment runner.

A resume must ask exactly what the stored answers answer: the recorded configuration
(FINGERPRINT_KEYS: model, template, prompt settings incl. domain and n_items, sampling, dataset,
validation split) must match, and each stored answer's `request_sha256` must equal the hash of the
request now built for its user; otherwise the run is refused (RunDirError) before anything is
written. Answers stored before requests were hashed (no `request_sha256`) are accepted only when the
manifest records every fingerprint field and they all match; without a manifest they are refused.
Everything written here passes through `inference.redact.redact` (answer texts excepted: the model
never sees a credential).
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import json
from pathlib import Path
import statistics
import threading
import time
from typing import Dict, Iterable, List, Optional

from tqdm import tqdm

from cikg_jax.training import rundir
from inference.redact import redact
from inference.requests import read_jsonl, request_sha256

# The run directory holds results of a different configuration, is in use, or cannot be written.
RunDirError = rundir.RunError


class ResultStore:
  """Append-only JSONL keyed by custom_id; the only writer of results.jsonl."""

  def __init__(self, path: Path):
    self.path = Path(path)
    self.path.parent.mkdir(parents=True, exist_ok=True)
    self.repaired_bytes = rundir.repair_tail(self.path)
    self.done: Dict[str, Dict] = {}
    if self.path.exists():
      try:
        for n, row in enumerate(read_jsonl(self.path), 1):
          if not isinstance(row.get("custom_id"), str):
            raise ValueError(f"{self.path}: record {n} has no custom_id")
          self.done.setdefault(row["custom_id"], row)  # a duplicate (never written by us): ignored
      except (ValueError, UnicodeDecodeError) as e:
        raise RunDirError(
          f"{e if isinstance(e, ValueError) else f'{self.path}: not UTF-8 ({e})'}: this run's "
          "answers file is damaged; delete or repair that line to keep the other answers, or "
          f"{_FRESH}"
        ) from None
    self._log = rundir.AppendLog(self.path, ensure_ascii=False)

  def add(self, record: Dict) -> bool:
    """Append a successful record unless its custom_id is already done; True if written."""
    cid = record["custom_id"]
    if cid in self.done:
      return False
    record = {
      **redact({k: v for k, v in record.items() if k != "text"}),
      **({"text": record["text"]} if "text" in record else {}),
    }
    self._log.append(record)
    self.done[cid] = record
    return True

  def close(self) -> None:
    self._log.close()


# What decides the requests (and so the answers) of a run. `prompt` is config.prompt (template,
# domain, n_items, strip_disambiguation); `split` says which items were held out of the prompts.
FINGERPRINT_KEYS = (
  "model",
  "revision",
  "served_name",
  "prompt_template",
  "prompt_template_hash",
  "prompt",
  "sampling",
  "structured_outputs",
  "dataset",
  "valid_file",
  "split",
)


def fingerprint_fields(info: Dict) -> Dict:
  """The FINGERPRINT_KEYS of a run info or manifest, as the manifest records them (redacted); a
  manifest written before `prompt` was recorded on its own has it in its config dump."""
  out = {k: info.get(k) for k in FINGERPRINT_KEYS}
  if "prompt" not in info and isinstance(info.get("config"), dict):
    out["prompt"] = info["config"].get("prompt")
  return redact(out)


def fingerprint(info: Dict) -> str:
  """Hash of what decides the requests (FINGERPRINT_KEYS); a resume must match it."""
  blob = json.dumps(fingerprint_fields(info), sort_keys=True, default=str).encode()
  return hashlib.sha256(blob).hexdigest()[:16]


def fingerprint_diff(recorded: Dict, now: Dict) -> List[str]:
  """`key recorded -> now` for every fingerprint field that differs (nested fields dotted)."""
  return rundir.differences(
    rundir.flatten(fingerprint_fields(recorded)), rundir.flatten(fingerprint_fields(now))
  )


def _write_json(path: Path, obj: Dict) -> None:
  rundir.write_json(path, redact(obj), sort_keys=True)


def finish_reason_counts(records: Iterable[Dict]) -> Dict[str, int]:
  return dict(collections.Counter(str(r.get("finish_reason")) for r in records))


_FRESH = "start fresh with another --config.out_dir (or move this directory away)"


def read_manifest(path: Path) -> Dict:
  """The run's manifest ({} if there is none yet); RunDirError naming the file if it is damaged."""
  if not path.exists():
    return {}
  try:
    manifest = json.loads(path.read_bytes().decode("utf-8"))
  except (ValueError, UnicodeDecodeError) as e:
    raise RunDirError(
      f"{path}: not valid JSON ({e}); move it away to resume without it (answers without a "
      f"request_sha256 then need it), or {_FRESH}"
    ) from None
  if not isinstance(manifest, dict):
    raise RunDirError(f"{path}: expected a JSON object; move it away, or {_FRESH}")
  return manifest


class RunDir:
  """A run directory held by this process: `with RunDir(path) as rd:` takes the lock (RunDirError if
  another run holds it) before anything is written there; `check`, `run` and `import_records` then
  work under it."""

  def __init__(self, run_dir: str | Path):
    self.path = Path(run_dir)
    self._lock: Optional[contextlib.ExitStack] = None
    self.repaired_bytes = 0

  def __enter__(self) -> "RunDir":
    self.path.mkdir(parents=True, exist_ok=True)
    lock = contextlib.ExitStack()
    # Nothing is written to take the lock: a refused run leaves the directory as it was.
    lock.enter_context(
      rundir.hold(
        str(self.path),
        holder="generation run",
        hint="wait for it, stop it, or use another --config.out_dir",
      )
    )
    self._lock = lock
    return self

  def __exit__(self, *exc) -> None:
    if self._lock is not None:
      self._lock.close()
      self._lock = None

  @property
  def manifest_path(self) -> Path:
    return self.path / "manifest.json"

  def manifest(self) -> Dict:
    return read_manifest(self.manifest_path)

  def check(self, requests: List[Dict], info: Dict) -> List[Dict]:
    """Refuse (RunDirError, one line) unless the stored answers answer exactly these requests under
    this configuration; returns the requests not yet answered. Repairs a partial last line of
    results.jsonl."""
    if self._lock is None:
      raise RuntimeError("RunDir.check outside `with RunDir(...)`")
    ids = [r["custom_id"] for r in requests]
    if len(set(ids)) != len(ids):
      raise ValueError("duplicate custom_id in the requests")
    manifest = self.manifest()
    if manifest:
      diff = fingerprint_diff(manifest, info)
      if diff:
        raise RunDirError(
          f"{self.path} holds results of another configuration ({'; '.join(diff)}); {_FRESH}"
        )
    store = ResultStore(self.path / "results.jsonl")
    store.close()
    self.repaired_bytes += store.repaired_bytes
    changed, legacy = [], 0
    for r in requests:
      rec = store.done.get(r["custom_id"])
      if rec is None:
        continue
      if rec.get("request_sha256") is None:
        legacy += 1
      elif rec["request_sha256"] != request_sha256(r):
        changed.append(r["custom_id"])
    if changed:
      raise RunDirError(
        f"{self.path} holds answers to other requests: {len(changed)} answered users now get a "
        f"different request (e.g. {changed[0]}) though the recorded configuration matches "
        f"(the data files or the prompt code changed); {_FRESH}"
      )
    if legacy and not manifest:
      raise RunDirError(
        f"{self.path}: {legacy} answers carry no request_sha256 and there is no manifest.json "
        f"to check them against; {_FRESH}"
      )
    return [r for r in requests if r["custom_id"] not in store.done]

  def import_records(
    self, records: Iterable[Dict], requests: List[Dict], info: Dict
  ) -> Dict[str, int]:
    """Store successful `records` (e.g. converted `vllm run-batch` output) for these requests, each
    with its request's hash; records for ids not among `requests` are skipped. Records info in the
    manifest."""
    self.check(requests, info)
    by_id = {r["custom_id"]: r for r in requests}
    store = ResultStore(self.path / "results.jsonl")
    n = {"imported": 0, "already_done": 0, "unknown_id": 0, "failed": 0}
    try:
      for rec in records:
        if not rec.get("ok"):
          n["failed"] += 1
        elif rec["custom_id"] not in by_id:
          n["unknown_id"] += 1
        elif store.add({**rec, "request_sha256": request_sha256(by_id[rec["custom_id"]])}):
          n["imported"] += 1
        else:
          n["already_done"] += 1
    finally:
      store.close()
    manifest = self.manifest()
    manifest.update(info, fingerprint=fingerprint(info))
    manifest.setdefault("imports", []).append(
      {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **n}
    )
    _write_json(self.manifest_path, manifest)
    return n

  def run(
    self,
    requests: List[Dict],
    backend,
    info: Dict,
    *,
    max_consecutive_failures: int = 50,
    progress: bool = True,
  ) -> Dict:
    """Send every request not yet answered through `backend` (after `check`); this run's summary."""
    self.check(requests, info)
    return _run_locked(
      requests, backend, self.path, info, max_consecutive_failures, progress, self.repaired_bytes
    )


def run_generation(
  requests: List[Dict],
  backend,
  run_dir: str | Path,
  info: Dict,
  *,
  max_consecutive_failures: int = 50,
  progress: bool = True,
) -> Dict:
  """Send every request not yet answered in `run_dir` through `backend`; returns this run's summary.

  `info` (model, revision, sampling, seed, template name/hash, ...) goes into the manifest; a resume
  with other requests or another fingerprint is refused so that one results file never mixes
  configurations. The run aborts (keeping everything received) after `max_consecutive_failures`
  failures in a row, the sign of a dead endpoint.
  """
  with RunDir(run_dir) as rd:
    return rd.run(
      requests, backend, info, max_consecutive_failures=max_consecutive_failures, progress=progress
    )


def _run_locked(
  requests, backend, run_dir, info, max_consecutive_failures, progress, repaired_bytes
) -> Dict:
  manifest_path = run_dir / "manifest.json"
  manifest = read_manifest(manifest_path)
  store = ResultStore(run_dir / "results.jsonl")
  ids = [r["custom_id"] for r in requests]
  hashes = {r["custom_id"]: request_sha256(r) for r in requests}
  todo = [r for r in requests if r["custom_id"] not in store.done]
  manifest.update(
    {k: v for k, v in info.items()}, fingerprint=fingerprint(info), backend=backend.describe()
  )
  run = {
    "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    "requested": len(requests),
    "already_done": len(requests) - len(todo),
    "repaired_bytes": repaired_bytes + store.repaired_bytes,
  }
  manifest.setdefault("runs", []).append(run)
  _write_json(manifest_path, manifest)

  stop = threading.Event()
  state = {"ok": 0, "failed": 0, "streak": 0, "aborted": None, "tokens": 0}
  reasons: collections.Counter = collections.Counter()
  latencies: List[float] = []
  bar = tqdm(  # on a terminal only (disable=None), as the trainer's
    total=len(todo),
    disable=None if progress else True,
    unit="req",
    dynamic_ncols=True,
    desc="generate",
  )
  t0 = time.monotonic()

  def emit(rec: Dict) -> None:
    if rec.get("ok"):
      if store.add({**rec, "request_sha256": hashes.get(rec["custom_id"])}):
        state["ok"] += 1
        state["tokens"] += (rec.get("usage") or {}).get("completion_tokens") or 0
        if rec.get("latency_s") is not None:
          latencies.append(rec["latency_s"])
      state["streak"] = 0
    else:
      state["failed"] += 1
      state["streak"] += 1
      reasons[rec.get("error", "unknown")] += 1
      rundir.append_line(
        run_dir / "failures.jsonl", redact({**rec, "time": time.time()}), ensure_ascii=False
      )
      if state["streak"] >= max_consecutive_failures and not stop.is_set():
        state["aborted"] = f"{state['streak']} consecutive failures (last: {rec.get('error')})"
        stop.set()
    bar.update(1)
    el = max(time.monotonic() - t0, 1e-9)
    bar.set_postfix(
      ok=state["ok"],
      fail=state["failed"],
      rps=f"{state['ok'] / el:.2f}",
      tok_s=f"{state['tokens'] / el:.0f}",
    )

  interrupted = None
  try:
    if todo:
      backend.run(todo, emit, stop)
  except BaseException as exc:  # KeyboardInterrupt, backend crash: keep what arrived, record why
    interrupted = redact(f"{type(exc).__name__}: {exc}")[:500]
    raise
  finally:
    bar.close()
    wall = time.monotonic() - t0
    store.close()
    done_now = [store.done[i] for i in ids if i in store.done]
    run.update(
      {
        "ok": state["ok"],
        "failed": state["failed"],
        "failure_reasons": dict(reasons),
        "wall_s": round(wall, 2),
        "requests_per_s": round(state["ok"] / wall, 3) if wall > 0 else None,
        "completion_tokens_per_s": round(state["tokens"] / wall, 1) if wall > 0 else None,
        "latency_s": _latency_stats(latencies),
        "aborted": state["aborted"] or interrupted,
        "remaining": len(requests) - len(done_now),
      }
    )
    if callable(
      getattr(backend, "run_stats", None)
    ):  # e.g. ray_data: start-up vs steady throughput
      run["backend_stats"] = backend.run_stats()
    manifest.update(
      done=len(done_now),
      remaining=len(requests) - len(done_now),
      finish_reasons=finish_reason_counts(done_now),
    )
    _write_json(manifest_path, manifest)
  return run


def _latency_stats(lat: List[float]) -> Optional[Dict]:
  if not lat:
    return None
  s = sorted(lat)
  return {
    "mean": round(statistics.fmean(s), 3),
    "p50": s[len(s) // 2],
    "p95": s[int(0.95 * (len(s) - 1))],
    "max": s[-1],
  }


def load_results(run_dir: str | Path) -> Dict[str, Dict]:
  """custom_id -> record of the successful answers in a run directory."""
  path = Path(run_dir) / "results.jsonl"
  if not path.exists():
    raise FileNotFoundError(f"{path}: no results; run `python -m inference.generate` first")
  out: Dict[str, Dict] = {}
  for line_no, line in enumerate(rundir.complete_lines(path), 1):  # not a torn last line
    if line.strip():
      try:
        row = json.loads(line)
      except json.JSONDecodeError:
        raise ValueError(f"{path}:{line_no}: not valid JSON") from None
      out.setdefault(row["custom_id"], row)
  return out

"""Durable, resumable generation: results appended as they arrive, reruns skip what is done.

Files in the run directory:
  results.jsonl   one line per successfully answered custom_id (never two), flushed + fsynced per line;
  failures.jsonl  one line per request that failed all its attempts in some run (reason, errors);
  manifest.json   what was run (model, revision, endpoints, sampling, seed, template hash) and per-run
                  counts, finish reasons and timings.
A run killed at any point loses only answers still in flight; a partial last line (killed mid-write) is
cut off on the next open. A lock file keeps two runners off the same directory.
"""
from __future__ import annotations

import collections
import fcntl
import hashlib
import json
import os
import statistics
import threading
import time
from pathlib import Path
from typing import Dict, Iterable, List, Optional

from tqdm import tqdm

from inference.requests import read_jsonl


class RunDirError(RuntimeError):
    """The run directory holds results of a different configuration, or is in use."""


def _repair_tail(path: Path) -> int:
    """Cut a partial last line (a write interrupted by a kill); returns the bytes removed."""
    if not path.exists() or path.stat().st_size == 0:
        return 0
    with open(path, "rb+") as f:
        data = f.read()
        if data.endswith(b"\n"):
            return 0
        keep = data.rfind(b"\n") + 1
        f.truncate(keep)
        return len(data) - keep


class ResultStore:
    """Append-only JSONL keyed by custom_id; the only writer of results.jsonl."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.repaired_bytes = _repair_tail(self.path)
        self.done: Dict[str, Dict] = {}
        if self.path.exists():
            for row in read_jsonl(self.path):
                self.done.setdefault(row["custom_id"], row)  # a duplicate (never written by us) is ignored
        self._f = open(self.path, "a", encoding="utf-8")

    def add(self, record: Dict) -> bool:
        """Append a successful record unless its custom_id is already done; True if written."""
        cid = record["custom_id"]
        if cid in self.done:
            return False
        self._f.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())
        self.done[cid] = record
        return True

    def close(self) -> None:
        self._f.close()


def append_line(path: Path, record: Dict) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


def fingerprint(info: Dict) -> str:
    """Hash of what decides the answers (model, revision, template, sampling); a resume must match it."""
    keys = ("model", "revision", "prompt_template", "prompt_template_hash", "sampling", "structured_outputs")
    blob = json.dumps({k: info.get(k) for k in keys}, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _write_json(path: Path, obj: Dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str))
    os.replace(tmp, path)


def finish_reason_counts(records: Iterable[Dict]) -> Dict[str, int]:
    return dict(collections.Counter(str(r.get("finish_reason")) for r in records))


class _Lock:
    def __init__(self, path: Path):
        self.f = open(path, "w")
        try:
            fcntl.flock(self.f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.f.close()
            raise RunDirError(f"{path}: another generation run holds this directory") from None

    def release(self) -> None:
        fcntl.flock(self.f, fcntl.LOCK_UN)
        self.f.close()


def run_generation(requests: List[Dict], backend, run_dir: str | Path, info: Dict, *,
                   max_consecutive_failures: int = 50, progress: bool = True) -> Dict:
    """Send every request not yet answered in `run_dir` through `backend`; returns this run's summary.

    `info` (model, revision, sampling, seed, template name/hash, ...) goes into the manifest; a resume
    with a different fingerprint is refused so that one results file never mixes configurations. The
    run aborts (keeping everything received) after `max_consecutive_failures` failures in a row, the
    sign of a dead endpoint.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = _Lock(run_dir / ".lock")
    try:
        return _run_locked(requests, backend, run_dir, info, max_consecutive_failures, progress)
    finally:
        lock.release()


def _run_locked(requests, backend, run_dir, info, max_consecutive_failures, progress) -> Dict:
    manifest_path = run_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    fp = fingerprint(info)
    if manifest.get("fingerprint") not in (None, fp):
        raise RunDirError(f"{run_dir}: holds results of another configuration (fingerprint "
                          f"{manifest['fingerprint']} != {fp}); use a new --out_dir")
    store = ResultStore(run_dir / "results.jsonl")
    ids = [r["custom_id"] for r in requests]
    if len(set(ids)) != len(ids):
        raise ValueError("duplicate custom_id in the requests")
    todo = [r for r in requests if r["custom_id"] not in store.done]
    manifest.update({k: v for k, v in info.items()}, fingerprint=fp, backend=backend.describe())
    run = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "requested": len(requests),
           "already_done": len(requests) - len(todo), "repaired_bytes": store.repaired_bytes}
    manifest.setdefault("runs", []).append(run)
    _write_json(manifest_path, manifest)

    stop = threading.Event()
    state = {"ok": 0, "failed": 0, "streak": 0, "aborted": None, "tokens": 0}
    reasons: collections.Counter = collections.Counter()
    latencies: List[float] = []
    bar = tqdm(total=len(todo), disable=not progress, unit="req", dynamic_ncols=True, desc="generate")
    t0 = time.monotonic()

    def emit(rec: Dict) -> None:
        if rec.get("ok"):
            if store.add(rec):
                state["ok"] += 1
                state["tokens"] += ((rec.get("usage") or {}).get("completion_tokens") or 0)
                if rec.get("latency_s") is not None:
                    latencies.append(rec["latency_s"])
            state["streak"] = 0
        else:
            state["failed"] += 1
            state["streak"] += 1
            reasons[rec.get("error", "unknown")] += 1
            append_line(run_dir / "failures.jsonl", {**rec, "time": time.time()})
            if state["streak"] >= max_consecutive_failures and not stop.is_set():
                state["aborted"] = f"{state['streak']} consecutive failures (last: {rec.get('error')})"
                stop.set()
        bar.update(1)
        el = max(time.monotonic() - t0, 1e-9)
        bar.set_postfix(ok=state["ok"], fail=state["failed"], rps=f"{state['ok'] / el:.2f}",
                        tok_s=f"{state['tokens'] / el:.0f}")

    interrupted = None
    try:
        if todo:
            backend.run(todo, emit, stop)
    except BaseException as exc:  # KeyboardInterrupt, backend crash: keep what arrived, record why
        interrupted = f"{type(exc).__name__}: {exc}"[:500]
        raise
    finally:
        bar.close()
        wall = time.monotonic() - t0
        store.close()
        done_now = [store.done[i] for i in ids if i in store.done]
        run.update({"ok": state["ok"], "failed": state["failed"], "failure_reasons": dict(reasons),
                    "wall_s": round(wall, 2), "requests_per_s": round(state["ok"] / wall, 3) if wall > 0 else None,
                    "completion_tokens_per_s": round(state["tokens"] / wall, 1) if wall > 0 else None,
                    "latency_s": _latency_stats(latencies), "aborted": state["aborted"] or interrupted,
                    "remaining": len(requests) - len(done_now)})
        manifest.update(done=len(done_now), remaining=len(requests) - len(done_now),
                        finish_reasons=finish_reason_counts(done_now))
        _write_json(manifest_path, manifest)
    return run


def _latency_stats(lat: List[float]) -> Optional[Dict]:
    if not lat:
        return None
    s = sorted(lat)
    return {"mean": round(statistics.fmean(s), 3), "p50": s[len(s) // 2], "p95": s[int(0.95 * (len(s) - 1))],
            "max": s[-1]}


def load_results(run_dir: str | Path) -> Dict[str, Dict]:
    """custom_id -> record of the successful answers in a run directory."""
    path = Path(run_dir) / "results.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no results; run `python -m inference.generate` first")
    out: Dict[str, Dict] = {}
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.endswith("\n"):
                break  # partial last line of an interrupted run
            if line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    raise ValueError(f"{path}:{line_no}: not valid JSON") from None
                out.setdefault(row["custom_id"], row)
    return out

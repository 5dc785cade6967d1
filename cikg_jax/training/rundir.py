"""Run directories: the one library behind training's workdir, the LLM runner's out_dir, the
experiment runner's result folders and the tuner's study journals.

It owns what makes a directory safe to resume in:
- `hold`/`locked`: an exclusive lock on the directory itself, or on a file that is never replaced
  (a study's journal); the kernel drops it when the process dies, and removing a lock file cannot
  let a second writer in;
- `write_atomic`/`write_json`: whole new content or the old one, the file and its directory
  fsynced;
- `AppendLog`/`append_line`: append-only JSON lines, each fsynced before the call returns, a
  failed write cut back so no torn line stays; `repair_tail` and `complete_lines` deal with the
  torn last line a kill leaves;
- `differences`: what changed between a stored configuration and the one asked for, one
  'key stored -> current' per key;
- every write failure as a one-line RunError naming the file.

Below that, a training run's identity (what a resume may not change): a resume that silently
changed the learning rate, seed or data would record one run made of two; two processes on one
workdir would interleave their epochs. Both are refused before anything in the workdir is
touched."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
from typing import Callable, Iterator, List, Mapping, Optional

import numpy as np

# A stored identity is compared under today's key names (cikg_jax.training.config_migration).
from cikg_jax.training.config_migration import canonical, flatten

IDENTITY_FILE = "identity.json"  # the requested config and the data's digest
LOCK_FILE = "run.lock"  # a training's workdir: holds the PID of the training holding the lock
# Keys a resume may change: when to stop, what to write, where the data lives (its content is
# checked through its digest instead). Everything else decides the numbers.
RESUMABLE_KEYS = frozenset(
  {
    "data_dir",
    "synthetic_dir",
    "interest_file",
    "train.max_epochs",
    "train.max_seconds",
    "train.plot",
    "train.deterministic",  # summation order on a GPU only
    "model.remat",  # where layer outputs live, not what they are
    "train.split_step",  # how many programs compute the gradient, not what it is
    "train.checkpoint",
    "train.checkpoint_every_seconds",
    "train.resume",
    # Where and how the processes meet; the numbers depend on the total device count, which the
    # data-parallel step makes matter only up to float summation order.
    "parallel.coordinator_address",
    "parallel.num_processes",
    "parallel.process_id",
  }
)
RUN_FILES = (
  "checkpoints",
  "metrics.jsonl",
  "tensorboard",
  "results.json",
  "curves.png",
  "config.json",
  "node_order.npz",  # graph modes: the table's row order (graph_parallel.NodeOrder)
  "partition.json",
  IDENTITY_FILE,
  "runner_wall_seconds.json",  # experiments/runner.py: wall time of the run's paused segments
)
_FRESH_HINT = (
  "use another --workdir, or --config.train.resume=False to delete that run and start afresh there"
)


class RunError(RuntimeError):
  """A run directory that cannot be used as asked; the message says why and what to do."""


# ---- the lock --------------------------------------------------------------------------------
@contextlib.contextmanager
def hold(path: str, *, holder: str, hint: str, pid_file: Optional[str] = None) -> Iterator[None]:
  """Holds an exclusive flock on `path` itself (a run's directory, or a file that is never
  replaced), so removing a lock file cannot let a second writer in; the kernel releases it when
  the process dies, so a killed run never leaves a stale lock. RunError (naming `holder`, the
  kind of job that holds it, and `hint`, what to do) if another process holds it.

  `pid_file`, if given, receives this process's PID once the lock is taken, for the message a
  second process gets; without it nothing is written, so a refused job leaves every file as it
  was."""
  path = os.fspath(path)
  fd = os.open(path, os.O_RDONLY)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      where = ""
      if pid_file is not None:
        try:
          with open(pid_file) as f:
            pid = f.read(32).strip() or "unknown"
        except OSError:
          pid = "unknown"
        where = f" (PID {pid}, lock {pid_file})"
      raise RunError(f"{path} is in use by another {holder}{where}: {hint}") from None
    if os.fstat(fd).st_ino != os.stat(path).st_ino:
      raise RunError(f"{path} was replaced while being locked; start the {holder} again")
    if pid_file is not None:
      pid_fd = os.open(pid_file, os.O_RDWR | os.O_CREAT, 0o644)
      try:
        os.ftruncate(pid_fd, 0)
        os.pwrite(pid_fd, f"{os.getpid()}\n".encode(), 0)
      finally:
        os.close(pid_fd)
    yield
  finally:
    os.close(fd)  # releases the flock; a PID file stays (its PID is stale but harmless)


def locked(workdir: str) -> contextlib.AbstractContextManager:
  """The lock of a training's workdir; run.lock holds the PID of the training that has it."""
  return hold(
    workdir,
    holder="training",
    hint="wait for it, stop it, or use another --workdir",
    pid_file=os.path.join(workdir, LOCK_FILE),
  )


# ---- crash-safe writes -----------------------------------------------------------------------
def fsync_dir(d: str) -> None:
  """Makes a directory's entries (a file created, replaced or renamed there) durable."""
  fd = os.open(d, os.O_RDONLY)
  try:
    os.fsync(fd)
  finally:
    os.close(fd)


def umask() -> int:
  """The process umask (read without changing it where Linux reports it)."""
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith("Umask:"):
          return int(line.split()[1], 8)
  except (OSError, ValueError):
    pass
  mask = os.umask(0o022)
  os.umask(mask)
  return mask


def ordinary_mode(fd: int) -> None:
  """mkstemp creates files 0600; a run's files get the mode of any ordinary file (0666 less the
  umask), so that a group can read them on a shared filesystem where the umask allows it."""
  os.fchmod(fd, 0o666 & ~umask())


@contextlib.contextmanager
def _naming(path: str) -> Iterator[None]:
  """An OSError of a write (a full disk raises ENOSPC without a file name) as a RunError naming
  `path` and what to do."""
  try:
    yield
  except OSError as e:
    full = e.errno == errno.ENOSPC
    raise RunError(
      f"{path}: cannot write ({e.strerror or e}); "
      + ("free space on its disk, then " if full else "")
      + "rerun the same command: the run resumes from what it saved"
    ) from e


def write_atomic(path: str, text) -> None:
  """Whole new content or the old one, never a mix (temp file, fsync, os.replace, fsync of the
  directory). `text`: str, or bytes written as they are."""
  path = os.fspath(path)
  d = os.path.dirname(os.path.abspath(path))
  binary = isinstance(text, bytes)
  with _naming(path):
    fd, tmp = tempfile.mkstemp(dir=d, prefix=os.path.basename(path) + ".", suffix=".tmp")
    try:
      ordinary_mode(fd)
      with os.fdopen(fd, "wb") if binary else os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
      os.replace(tmp, path)
    except BaseException:
      if os.path.exists(tmp):
        os.remove(tmp)
      raise
    fsync_dir(d)


def write_json(path: str, obj, *, indent: int = 2, sort_keys: bool = False) -> None:
  write_atomic(path, json.dumps(obj, indent=indent, sort_keys=sort_keys, default=str) + "\n")


class AppendLog:
  """An append-only JSON-lines file: `append` writes one record as one line and returns once it
  is on disk (fsynced; the directory too when the file is new). A write that fails (a full disk)
  is cut back to the previous end, so no torn line is left where it can be undone."""

  def __init__(self, path: str, *, ensure_ascii: bool = True):
    self.path = os.fspath(path)
    self.ensure_ascii = ensure_ascii
    new = not os.path.exists(self.path)
    with _naming(self.path):
      self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
      if new:
        fsync_dir(os.path.dirname(os.path.abspath(self.path)))

  def append(self, record: Mapping) -> None:
    data = (json.dumps(record, ensure_ascii=self.ensure_ascii) + "\n").encode("utf-8")
    with _naming(self.path):
      size = os.fstat(self._fd).st_size
      try:
        view = memoryview(data)
        while view:
          view = view[os.write(self._fd, view) :]
        os.fsync(self._fd)
      except OSError:
        os.ftruncate(self._fd, size)
        raise

  def close(self) -> None:
    if self._fd >= 0:
      os.close(self._fd)
      self._fd = -1

  def __enter__(self) -> "AppendLog":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def append_line(path: str, record: Mapping, *, ensure_ascii: bool = True) -> None:
  """One record appended to a JSON-lines file, on disk when this returns (a training's epoch line
  before the checkpoint that claims its epoch is written)."""
  with AppendLog(path, ensure_ascii=ensure_ascii) as f:
    f.append(record)


def repair_tail(path: str) -> int:
  """Cuts a partial last line (a write interrupted by a kill) off a JSON-lines file, durably;
  returns the bytes removed."""
  path = os.fspath(path)
  if not os.path.exists(path) or os.path.getsize(path) == 0:
    return 0
  with _naming(path), open(path, "rb+") as f:
    data = f.read()
    if data.endswith(b"\n"):
      return 0
    keep = data.rfind(b"\n") + 1
    f.truncate(keep)
    f.flush()
    os.fsync(f.fileno())
    return len(data) - keep


def complete_lines(path: str) -> List[str]:
  """The lines of a file that a writer finished (newline-terminated): a torn last line, of a kill
  or of a write in progress, is left out. A missing file has none; ValueError naming the file if
  it is not UTF-8."""
  try:
    with open(path, "rb") as f:
      data = f.read()
  except FileNotFoundError:
    return []
  try:
    text = data[: data.rfind(b"\n") + 1].decode("utf-8")
  except UnicodeDecodeError as e:
    raise ValueError(f"{path}: not UTF-8 ({e})") from None
  return text.split("\n")[:-1]  # only at newlines: a record's text may hold U+2028 and the like


# ---- what changed ----------------------------------------------------------------------------
def _short(v) -> str:
  s = json.dumps(v, default=str)
  return s if len(s) <= 40 else s[:37] + "..."


def differences(stored: Mapping, current: Mapping, *, ignore: frozenset = frozenset()) -> List[str]:
  """'key stored -> current' for every key of two flat configurations (see `flatten`) that
  differs, `ignore` aside; '(absent)' where one lacks the key."""
  missing = object()
  out = []
  for k in sorted((stored.keys() | current.keys()) - ignore):
    x, y = stored.get(k, missing), current.get(k, missing)
    if x != y:
      out.append(
        f"{k} {'(absent)' if x is missing else _short(x)} -> "
        f"{'(absent)' if y is missing else _short(y)}"
      )
  return out


# ---- a training run's identity ---------------------------------------------------------------
def check_workdir(workdir: str) -> None:
  if os.path.lexists(workdir) and not os.path.exists(workdir):
    raise RunError(
      f"{workdir}: the workdir is a symbolic link that leads nowhere (a loop or a missing "
      "target); point it at a directory or use another --workdir"
    )
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise NotADirectoryError(f"{workdir}: the workdir is a file, not a directory")


def plain(config) -> dict:
  """The config as JSON would store it (tuples become lists), so stored and new compare alike."""
  d = config.to_dict() if hasattr(config, "to_dict") else config
  return json.loads(json.dumps(d, default=str))


def data_digest(ds) -> str:
  """SHA-256 of the loaded dataset (splits, KG, interests, sizes): moving the data may not change
  a run, changing its content must."""
  h = hashlib.sha256()
  for name in ("train", "valid", "test", "kg", "user_interest"):
    a = np.ascontiguousarray(getattr(ds, name), dtype=np.int64)
    h.update(f"{name}{a.shape}".encode())
    h.update(a.tobytes())
  h.update(
    json.dumps(
      [ds.n_users, ds.n_items, ds.n_entities, ds.n_relations, ds.n_interests, ds.selection]
    ).encode()
  )
  return h.hexdigest()


def config_differences(stored: dict, current: dict) -> List[str]:
  """'key stored -> current' for every key outside RESUMABLE_KEYS that differs (both read under
  today's key names, `canonical`)."""
  return differences(canonical(flatten(stored)), canonical(flatten(current)), ignore=RESUMABLE_KEYS)


def _read_json(path: str):
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError) as e:
    raise RunError(f"{path}: unreadable ({e}); {_FRESH_HINT}") from e


def check_resume(
  workdir: str, requested, effective=None, data_sha256: Optional[str] = None
) -> bool:
  """True if `workdir` holds this run (resume it), False if it holds none; raises RunError if it
  holds another. Reads only. Without `effective`/`data_sha256` (before the data is loaded) the
  checks that need them are left to a second call."""
  ident = os.path.join(workdir, IDENTITY_FILE)
  legacy = os.path.join(workdir, "config.json")  # runs from before identity.json: effective config
  if os.path.exists(ident):
    stored = _read_json(ident)
    diffs = config_differences(stored.get("config", {}), plain(requested))
    if data_sha256 is not None and stored.get("data_sha256") not in (None, data_sha256):
      diffs.append("the dataset's content (data_sha256)")
  elif os.path.exists(legacy):
    if effective is None:
      return True
    diffs = config_differences(_read_json(legacy), plain(effective))
  elif has_checkpoints(workdir):
    raise RunError(
      f"{workdir}: holds checkpoints but no {IDENTITY_FILE} or config.json saying "
      f"which run they belong to; {_FRESH_HINT}"
    )
  else:
    return False
  if diffs:
    raise RunError(
      f"{workdir} holds a run with other settings ({'; '.join(diffs)}): resuming "
      f"it would mix two runs; {_FRESH_HINT}"
    )
  if not requested.train.get("checkpoint", True) and has_checkpoints(workdir):
    raise RunError(
      f"{workdir} holds checkpoints of this run: train.checkpoint=False would restart it from "
      "epoch 0 beside them (a later resume would mix the two); resume it with "
      f"train.checkpoint=True, or {_FRESH_HINT}"
    )
  return True


def has_checkpoints(workdir: str) -> bool:
  d = os.path.join(workdir, "checkpoints")
  return os.path.isdir(d) and bool(os.listdir(d))


def clear(workdir: str) -> List[str]:
  """Deletes a previous run's files (only those a run writes); returns their names."""
  gone = []
  for name in RUN_FILES:
    path = os.path.join(workdir, name)
    if os.path.isdir(path) and not os.path.islink(path):
      shutil.rmtree(path)
    elif os.path.lexists(path):
      os.remove(path)
    else:
      continue
    gone.append(name)
  return gone


def logged_epochs(
  path: str, log: Callable[[str], None] = logging.getLogger(__name__).warning
) -> List[str]:
  """The lines of metrics.jsonl that prove epochs 0, 1, 2, ... in order, each once: the file is
  read up to its first line that is not the next epoch's record (a torn line of a crash, a
  duplicate, a gap), which is reported through `log`. A missing file proves nothing."""
  if not os.path.exists(path):
    return []
  with open(path, "rb") as f:
    text = f.read().decode("utf-8", errors="replace")
  keep = []
  for n, line in enumerate(text.split("\n"), start=1):
    if not line.strip():
      continue
    try:
      record = json.loads(line)
      epoch = record["epoch"] if isinstance(record, dict) else None
    except (ValueError, KeyError):
      epoch = None
    if epoch != len(keep) or isinstance(epoch, bool):
      what = "not an epoch record" if epoch is None else f"epoch {epoch} where {len(keep)} is due"
      log(f"note: {path}:{n}: {what}; the log is kept up to epoch {len(keep) - 1} only")
      break
    keep.append(line + "\n")
  return keep


def keep_epochs(path: str, lines: List[str], last_epoch: int) -> None:
  """Rewrites `path` (temporary file and os.replace, never in place) with the records of epochs
  0..`last_epoch` out of `lines` (those the restored checkpoint covers)."""
  write_atomic(path, "".join(lines[: last_epoch + 1]))

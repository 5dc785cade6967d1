"""The work directory of a training run: its identity (what a resume may not change), the lock that
keeps two trainings apart, and crash-safe writes of its files.

A resume that silently changed the learning rate, seed or data would record one run made of two;
two processes on one workdir would interleave their epochs. Both are refused before anything in
the workdir is touched."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from typing import Callable, Iterator, List, Optional

import numpy as np

IDENTITY_FILE = "identity.json"  # the requested config and the data's digest
LOCK_FILE = "run.lock"  # flock'ed while a training runs; holds its PID
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
# Keys added to the config after runs were first written, with the value that reproduces the runs
# from before them: a stored identity without such a key compares as if it held that value.
ADDED_KEYS = {
  "parallel.mode": "data",
  "parallel.num_devices": 1,
  "parallel.data_devices": 0,
  "cl.chunk": 0,
  "parallel.exchange": "all_gather",
}
# Keys that moved (old name -> new name): a config holding the old one compares under the new name.
MOVED_KEYS = {"train.num_devices": "parallel.num_devices"}
RUN_FILES = (
  "checkpoints",
  "metrics.jsonl",
  "tensorboard",
  "results.json",
  "curves.png",
  "config.json",
  IDENTITY_FILE,
)
_FRESH_HINT = (
  "use another --workdir, or --config.train.resume=False to delete that run and start afresh there"
)


class RunError(RuntimeError):
  """A workdir that cannot be used as asked; the message says why and what to do."""


def check_workdir(workdir: str) -> None:
  if os.path.lexists(workdir) and not os.path.exists(workdir):
    raise RunError(
      f"{workdir}: the workdir is a symbolic link that leads nowhere (a loop or a missing "
      "target); point it at a directory or use another --workdir"
    )
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise NotADirectoryError(f"{workdir}: the workdir is a file, not a directory")


# ---- identity --------------------------------------------------------------------------------
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


def _flat(d: dict, prefix: str = "") -> dict:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flat(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def canonical(flat: dict) -> dict:
  """A flat config under today's key names: moved keys renamed (the old value counts where the new
  key is absent or at its default; both set to different non-defaults is a conflict
  parallel.settings reports), added keys absent from it filled with their defaults."""
  out = dict(flat)
  for old, new in MOVED_KEYS.items():
    if old in out:
      value = out.pop(old)
      if out.get(new, ADDED_KEYS.get(new)) == ADDED_KEYS.get(new):
        out[new] = value
  for key, value in ADDED_KEYS.items():
    out.setdefault(key, value)
  return out


def _short(v) -> str:
  s = json.dumps(v)
  return s if len(s) <= 40 else s[:37] + "..."


def config_differences(stored: dict, current: dict) -> List[str]:
  """'key stored -> current' for every key outside RESUMABLE_KEYS that differs (both read under
  today's key names, `canonical`)."""
  a, b = canonical(_flat(stored)), canonical(_flat(current))
  missing = object()
  out = []
  for k in sorted((a.keys() | b.keys()) - RESUMABLE_KEYS):
    x, y = a.get(k, missing), b.get(k, missing)
    if x != y:
      out.append(
        f"{k} {'(absent)' if x is missing else _short(x)} -> "
        f"{'(absent)' if y is missing else _short(y)}"
      )
  return out


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


# ---- the lock --------------------------------------------------------------------------------
@contextlib.contextmanager
def locked(workdir: str) -> Iterator[None]:
  """Holds an exclusive flock on the workdir directory itself, so removing run.lock (which only
  holds the PID, for the message) cannot let a second training in; the kernel releases it when
  the process dies, so a killed run never leaves a stale lock."""
  path = os.path.join(workdir, LOCK_FILE)
  dir_fd = os.open(workdir, os.O_RDONLY | os.O_DIRECTORY)
  try:
    try:
      fcntl.flock(dir_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      try:
        with open(path) as f:
          holder = f.read(32).strip() or "unknown"
      except OSError:
        holder = "unknown"
      raise RunError(
        f"{workdir} is in use by another training (PID {holder}, lock {path}): "
        "wait for it, stop it, or use another --workdir"
      ) from None
    if os.fstat(dir_fd).st_ino != os.stat(workdir).st_ino:
      raise RunError(f"{workdir} was replaced while being locked; start the training again")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      os.ftruncate(fd, 0)
      os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    finally:
      os.close(fd)
    yield
  finally:
    os.close(dir_fd)  # releases the flock; run.lock stays (its PID is stale but harmless)


# ---- crash-safe writes -----------------------------------------------------------------------
def _fsync_dir(d: str) -> None:
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
      + "rerun the same command: the run resumes from its last checkpoint"
    ) from e


def write_atomic(path: str, text: str) -> None:
  """Whole new content or the old one, never a mix (temp file, fsync, os.replace)."""
  d = os.path.dirname(os.path.abspath(path))
  with _naming(path):
    fd, tmp = tempfile.mkstemp(dir=d, prefix=os.path.basename(path) + ".", suffix=".tmp")
    try:
      ordinary_mode(fd)
      with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
      os.replace(tmp, path)
    except BaseException:
      if os.path.exists(tmp):
        os.remove(tmp)
      raise
    _fsync_dir(d)


def write_json(path: str, obj) -> None:
  write_atomic(path, json.dumps(obj, indent=2, default=str) + "\n")


def append_line(path: str, record: dict) -> None:
  """On disk before the checkpoint that claims its epoch is written."""
  with _naming(path), open(path, "a") as f:
    size = f.tell()
    try:
      f.write(json.dumps(record) + "\n")
      f.flush()
      os.fsync(f.fileno())
    except OSError:
      f.truncate(size)  # no torn line left behind where it can be undone
      raise


def logged_epochs(path: str, log: Callable[[str], None] = print) -> List[str]:
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

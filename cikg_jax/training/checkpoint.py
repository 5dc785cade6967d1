"""Exact resume with orbax: the train state (params, both optimizer states, step) and the host
loop state (epoch, early-stopping counters, best metrics) are saved after every epoch; the
epoch's batches and keys are functions of (seed, epoch), so a resumed run continues identically.

A damaged step (truncated or zeroed files, a missing item, a flipped byte) must not block a run
whose previous step is intact, nor resume it with silently changed state: each save records a
SHA-256 of its arrays and loop state, and restore falls back to the newest step that restores and
matches its digest.

With several processes (cikg_jax/parallel/distributed.py) every process calls `manager`, `save` and
`restore_latest` at the same points, as orbax's multi-process protocol requires (process 0, its
primary host, writes; the others wait at its barriers). The replicated state goes to orbax as host
numpy arrays there: a per-process device array is "host-local", which orbax refuses to save, and
process 0 writing the one copy is all a replicated state needs. The directory must be one that
every process sees (a shared filesystem across hosts)."""

from __future__ import annotations

import contextlib
import errno
import gc
import hashlib
import inspect
import json
import logging
import os
import sys
from typing import Any, Callable, Optional, Tuple

import jax
import numpy as np
import orbax.checkpoint as ocp

DIGEST_KEY = "state_sha256"


class CheckpointError(RuntimeError):
  """No step of a non-empty checkpoint directory restores."""


def manager(workdir: str) -> ocp.CheckpointManager:
  # max_to_keep=2: a damaged latest step always has an older one to fall back to.
  return ocp.CheckpointManager(
    os.path.abspath(os.path.join(workdir, "checkpoints")),
    options=ocp.CheckpointManagerOptions(max_to_keep=2, create=True),
    item_names=("state", "best_params", "loop"),
  )


def digest(state, best_params, loop: dict) -> str:
  """SHA-256 of every array (dtype, shape, bytes, in tree order) and of the loop state."""
  h = hashlib.sha256()
  for x in jax.tree_util.tree_leaves(jax.device_get((state, best_params))):
    a = np.ascontiguousarray(np.asarray(x))
    h.update(f"{a.dtype.str}{a.shape}".encode())
    h.update(a.tobytes())
  h.update(json.dumps({k: v for k, v in loop.items() if k != DIGEST_KEY}, sort_keys=True).encode())
  return h.hexdigest()


def _host_local(tree):
  """Numpy arrays with several processes (see the module docstring); `tree` with one."""
  return jax.device_get(tree) if jax.process_count() > 1 else tree


@contextlib.contextmanager
def _orbax_logs_off():
  """Orbax logs a failed save several times over, each with its traceback (hundreds of lines on
  a full disk), some from its background threads after the save has returned; `save` reports it
  once, in one line. After a failure they stay off: the run is ending."""
  absl_logger = logging.getLogger("absl")
  level, excepthook = absl_logger.level, sys.excepthook

  def quiet(kind, value, tb):  # TensorStore callbacks reaching orbax's closed event loop
    if not (kind is RuntimeError and "Event loop is closed" in str(value)):
      excepthook(kind, value, tb)

  absl_logger.setLevel(logging.CRITICAL)
  sys.excepthook = quiet
  yield
  absl_logger.setLevel(level)
  sys.excepthook = excepthook


def save(mgr: ocp.CheckpointManager, epoch: int, state, best_params, loop: dict) -> None:
  """Saves epoch `epoch`; a failed save (a full disk, an I/O error) raises CheckpointError naming
  the directory: the previous steps stay, and a rerun resumes from the newest."""
  state, best_params = _host_local((state, best_params))
  loop = dict(loop, **{DIGEST_KEY: digest(state, best_params, loop)})
  try:
    with _orbax_logs_off():
      mgr.save(
        epoch,
        args=ocp.args.Composite(
          state=ocp.args.StandardSave(state),
          best_params=ocp.args.StandardSave(best_params),
          loop=ocp.args.JsonSave(loop),
        ),
      )
      mgr.wait_until_finished()
  except Exception as e:  # orbax/tensorstore raise many kinds for one failed write
    saved = [s for s in mgr.all_steps() if s != epoch]
    raise CheckpointError(
      f"{mgr.directory}: saving the checkpoint of epoch {epoch} failed ({_why(e)}); "
      + ("the disk is full: free space, then " if _disk_full(e) else "")
      + "rerun the same command to resume from "
      + (f"the saved epoch {max(saved)}" if saved else "the start")
    ) from e


def _disk_full(e: BaseException) -> bool:
  text = f"{e} {e.__cause__}"
  return getattr(e, "errno", None) == errno.ENOSPC or any(
    w in text for w in ("No space left", "RESOURCE_EXHAUSTED", "ENOSPC")
  )


def _restore_step(mgr, step, state_like, params_like):
  abstract = lambda tree: jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, _host_local(tree))
  got = mgr.restore(
    step,
    args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract(state_like)),
      best_params=ocp.args.StandardRestore(abstract(params_like)),
      loop=ocp.args.JsonRestore(),
    ),
  )
  loop = dict(got.loop)
  if loop.get("epoch") != step:
    raise ValueError(f"its loop state names epoch {loop.get('epoch')!r}")
  want = loop.pop(DIGEST_KEY, None)  # absent in checkpoints written before digests existed
  if want is not None and want != digest(got.state, got.best_params, loop):
    raise ValueError("content does not match the SHA-256 recorded at save time")
  return got.state, got.best_params, loop


@contextlib.contextmanager
def _quiet_coroutines():
  """A failed restore leaves TensorStore read coroutines that raise when garbage-collected, each
  printing a long "Exception ignored in: <coroutine ...>" dump (at exit, after the run's last
  line), and asyncio tasks whose exception nobody awaited, which asyncio's logger reports with the
  same dump ("Task exception was never retrieved"). The failure is already reported in one line:
  both are collected here, silently."""
  default = sys.unraisablehook

  def hook(unraisable):
    if not inspect.iscoroutine(unraisable.object):
      default(unraisable)

  asyncio_log = logging.getLogger("asyncio")
  unretrieved = _UnretrievedTaskFilter()
  sys.unraisablehook = hook
  asyncio_log.addFilter(unretrieved)
  try:
    yield
  finally:
    gc.collect()
    asyncio_log.removeFilter(unretrieved)
    sys.unraisablehook = default


class _UnretrievedTaskFilter(logging.Filter):
  """Drops asyncio's "... exception was never retrieved" records (and nothing else)."""

  def filter(self, record: logging.LogRecord) -> bool:
    return not record.getMessage().partition("\n")[0].endswith("exception was never retrieved")


def _why(e: BaseException) -> str:
  text = " ".join(str(e).split()).split(". See full TensorStore details")[0]
  return f"{type(e).__name__}: {text[:200]}{'...' if len(text) > 200 else ''}"


def restore_latest(
  mgr: ocp.CheckpointManager,
  state_like,
  params_like,
  delete_damaged: bool = False,
  log: Callable[[str], None] = logging.getLogger(__name__).warning,
  max_step: Optional[int] = None,
) -> Optional[Tuple[Any, Any, dict]]:
  """(state, best_params, loop) of the newest step that restores and verifies, None without
  steps. Skipped steps are reported through `log` and, with `delete_damaged`, deleted (so a
  replay can save those epochs again) once an older step verifies. Steps above `max_step` (epochs
  the metrics log does not cover) are skipped the same way; if they are the only steps, they are
  deleted and None returned: the run replays from its start."""
  steps = sorted(mgr.all_steps(), reverse=True)
  beyond = [s for s in steps if max_step is not None and s > max_step]
  if beyond:
    log(
      f"note: checkpoint step(s) {beyond} in {mgr.directory} are beyond the epochs the metrics "
      f"log holds (up to {max_step}); replaying those epochs to rewrite their lines"
    )
  candidates = [s for s in steps if s not in beyond]
  if beyond and not candidates:
    if delete_damaged:
      for step in beyond:
        mgr.delete(step)
    log("replaying the run from its first epoch")
    return None
  for n, step in enumerate(candidates):
    try:
      with _quiet_coroutines():
        restored = _restore_step(mgr, step, state_like, params_like)
    except Exception as e:  # orbax/tensorstore raise many kinds; every one means "damaged"
      log(f"warning: checkpoint step {step} in {mgr.directory} is damaged ({_why(e)}); skipped it")
      continue
    if delete_damaged:
      for bad in beyond + candidates[:n]:  # only once a good step is found: never the last resort
        mgr.delete(bad)
    if n or beyond:
      log(f"resuming from checkpoint step {step} instead")
    return restored
  if candidates:
    raise CheckpointError(
      f"{mgr.directory}: no checkpoint step restores (tried {candidates}); start the run afresh "
      "with --config.train.resume=False or use another workdir"
    )
  return None


def latest_step(mgr: Optional[ocp.CheckpointManager]) -> Optional[int]:
  return None if mgr is None else mgr.latest_step()

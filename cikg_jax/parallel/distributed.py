"""Several processes (hosts) training one run: `jax.distributed` set-up and the little the training
loop needs beyond it.

Each process drives its own local devices; `pmap`'s collectives (the gradient `psum`) span every
device of every process. Every process draws the same epoch batches from (seed, epoch) and feeds its
devices its own contiguous slice of each global mini-batch (`local_rows`), so process p, device l
holds the rows a single process with all the devices would give its device p * L + l. Every process
evaluates the same replicated parameters; process 0 (the primary) alone takes the workdir's lock,
writes the run's files and logs, and its loop state, whose clock decides the time budget and when
to save, reaches the others through the coordination service's key-value store (`from_primary`),
so all processes take the same path. `agree` makes every process stop if any failed to set up.

Where the settings come from (`initialize`):
1. `config.parallel.coordinator_address` / `num_processes` / `process_id` where set;
2. otherwise JAX's own cluster detection fills the rest (`jax.distributed.initialize` with those
   arguments None): under Slurm it reads SLURM_NTASKS, SLURM_PROCID, SLURM_LOCALID and the first
   node of SLURM_STEP_NODELIST (port 61440 + SLURM_JOB_ID % 4096, or JAX_COORDINATOR_PORT), and
   binds each process to the one GPU SLURM_LOCALID names; Open MPI (OMPI_* variables) likewise.
   JAX_COORDINATOR_ADDRESS, if set, is the coordinator address.
Without any of these, or with one process, nothing is initialised: the single-process path.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from typing import Any, Callable, Dict, Optional

import jax
import numpy as np

log = logging.getLogger(__name__)

# How long a process waits for another's message (process 0 evaluating a large split, a slow
# data load elsewhere). A process that dies ends the others sooner: the coordination service's
# heartbeat fails them.
WAIT_SECONDS = 24 * 3600
_SLURM_VARS = (
  "SLURM_JOB_ID",
  "SLURM_STEP_NODELIST",
  "SLURM_NTASKS",
  "SLURM_PROCID",
  "SLURM_LOCALID",
)
_OMPI_VARS = ("OMPI_MCA_orte_hnp_uri", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK")


def _settings(config) -> Dict[str, Any]:
  """The explicit settings of `config.parallel` (None = unset: cluster detection decides)."""
  p = config.get("parallel") or {}
  address = p.get("coordinator_address", "") or None
  n = p.get("num_processes", 0)
  pid = p.get("process_id", -1)
  return dict(
    coordinator_address=address,
    num_processes=n if n and n > 0 else None,
    process_id=pid if pid is not None and pid >= 0 else None,
  )


def _cluster_processes() -> int:
  """How many processes the cluster environment says this job has (1 outside one)."""
  if all(v in os.environ for v in _SLURM_VARS):
    return int(os.environ["SLURM_NTASKS"])
  if all(v in os.environ for v in _OMPI_VARS):
    return int(os.environ["OMPI_COMM_WORLD_SIZE"])
  return 1


def wanted(config) -> bool:
  """True if this launch is one process of several."""
  s = _settings(config)
  if s["num_processes"] is not None:
    return s["num_processes"] > 1
  return s["coordinator_address"] is not None or _cluster_processes() > 1


def initialize(config) -> bool:
  """Joins the job's processes (before anything touches a device); False for a single process.
  On CPU the collectives between processes go over TCP (gloo)."""
  if not wanted(config):
    return False
  s = _settings(config)
  if s["num_processes"] is not None and s["process_id"] is None and _cluster_processes() == 1:
    raise ValueError(
      f"parallel.num_processes={s['num_processes']} needs parallel.process_id (0.."
      f"{s['num_processes'] - 1}) for each process outside Slurm/Open MPI"
    )
  if s["coordinator_address"] is None and _cluster_processes() == 1:
    if not os.environ.get("JAX_COORDINATOR_ADDRESS"):
      raise ValueError(
        "several processes need parallel.coordinator_address (host:port of process 0)"
      )
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(**s)
  log.info(
    "process %d of %d: %d local of %d devices",
    jax.process_index(),
    jax.process_count(),
    jax.local_device_count(),
    jax.device_count(),
  )
  return True


def process_count() -> int:
  return jax.process_count()


def is_primary() -> bool:
  """Process 0: the one that locks the workdir, writes its files and logs progress."""
  return jax.process_index() == 0


def local_rows(batch: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
  """This process's contiguous share of every global mini-batch array (the whole with one
  process)."""
  n, p = jax.process_count(), jax.process_index()
  if n == 1:
    return batch
  out = {}
  for k, v in batch.items():
    if v.shape[0] % n:
      raise ValueError(
        f"batch of {v.shape[0]} rows does not split over {n} processes; choose a batch size "
        "divisible by the total device count"
      )
    m = v.shape[0] // n
    out[k] = v[p * m : (p + 1) * m]
  return out


# ---- messages between processes (the coordination service's key-value store) -----------------
_counter = {}


def _client():
  from jax._src import distributed as jax_distributed  # what orbax's multihost utilities use

  client = jax_distributed.global_state.client
  if client is None:
    raise RuntimeError("jax.distributed is not initialised")
  return client


def _key(tag: str) -> str:
  """Unique per call site and call: every process makes the same calls in the same order."""
  n = _counter[tag] = _counter.get(tag, -1) + 1
  return f"cikg_jax/{tag}/{n}"


def from_primary(obj: Any, tag: str) -> Any:
  """Process 0's `obj` (JSON-serialisable) on every process; `obj` itself with one process."""
  if jax.process_count() == 1:
    return obj
  key = _key(tag)
  client = _client()
  if is_primary():
    client.key_value_set(key, json.dumps(obj))
    return obj
  return json.loads(client.blocking_key_value_get(key, WAIT_SECONDS * 1000))


def agree(
  error: Optional[BaseException], tag: str, fingerprint: Optional[Callable[[], str]] = None
) -> None:
  """Every process reports how its part of a phase went and what it set up (`fingerprint()`);
  all raise if any failed or set up something else, so no process is left waiting in a
  collective for one that stopped. With one process: re-raises `error`, computes nothing."""
  if jax.process_count() == 1:
    if error is not None:
      raise error
    return
  from cikg_jax.training import rundir

  key = _key(tag)
  client = _client()
  me = jax.process_index()
  if error is not None:
    mine = {"error": _one_line(error)}
  else:
    mine = {"fingerprint": fingerprint() if fingerprint is not None else ""}
  client.key_value_set(f"{key}/{me}", json.dumps(mine))
  if error is not None:
    raise error
  for p in range(jax.process_count()):
    if p == me:
      continue
    got = json.loads(client.blocking_key_value_get(f"{key}/{p}", WAIT_SECONDS * 1000))
    if "error" in got:
      raise rundir.RunError(f"process {p} stopped: {got['error']}")
    if got["fingerprint"] != mine["fingerprint"]:
      raise rundir.RunError(
        f"process {p} set up another run than process {me} (its config or data differ): every "
        "process needs the same flags, apart from parallel.process_id and data paths, and the "
        "same data"
      )


# Keys that may differ between processes: the process's own id, and where its copy of the data
# lives (the data's content is in the digest).
_OWN_KEYS = (("parallel", "process_id"), ("data_dir",), ("synthetic_dir",), ("interest_file",))


def fingerprint(config, data_sha256: str) -> str:
  """SHA-256 of a process's requested config (_OWN_KEYS aside) and its data's digest."""
  d = config.to_dict()
  for path in _OWN_KEYS:
    node = d
    for k in path[:-1]:
      node = node.get(k, {})
    node.pop(path[-1], None)
  text = json.dumps([d, data_sha256], sort_keys=True, default=str)
  return hashlib.sha256(text.encode()).hexdigest()


def _one_line(e: BaseException) -> str:
  return " ".join(str(e).split()) or type(e).__name__

"""Exact resume with orbax: the train state (params, both optimizer states, step) and the host
loop state (epoch, early-stopping counters, best metrics) are saved after every epoch; the
epoch's batches and keys are functions of (seed, epoch), so a resumed run continues identically."""

from __future__ import annotations

import os
from typing import Any, Optional, Tuple

import jax
import orbax.checkpoint as ocp


def manager(workdir: str) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(
      os.path.abspath(os.path.join(workdir, "checkpoints")),
      options=ocp.CheckpointManagerOptions(max_to_keep=2, create=True),
      item_names=("state", "best_params", "loop"))


def save(mgr: ocp.CheckpointManager, epoch: int, state, best_params, loop: dict) -> None:
  mgr.save(epoch, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state), best_params=ocp.args.StandardSave(best_params),
      loop=ocp.args.JsonSave(loop)))
  mgr.wait_until_finished()


def restore_latest(mgr: ocp.CheckpointManager, state_like, params_like
                   ) -> Optional[Tuple[Any, Any, dict]]:
  step = mgr.latest_step()
  if step is None:
    return None
  abstract = lambda tree: jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, tree)
  got = mgr.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract(state_like)),
      best_params=ocp.args.StandardRestore(abstract(params_like)),
      loop=ocp.args.JsonRestore()))
  return got.state, got.best_params, got.loop

"""Data parallelism with `jax.pmap`: the train state and graphs are replicated, each mini-batch
is split row-wise over the local devices, and the one train step (steps.train_step with
steps.BatchShards) sums the shards' gradients. The result equals the single-device step up to float
summation order (tested on simulated CPU devices).

The graphs here fit one device many times over (dbbook2014's CIKG: 370k edges), so replicating
them and splitting the batch is the right cut; every device still propagates the whole graph.
"""

from __future__ import annotations

from typing import Dict

import jax
import jax.numpy as jnp
import numpy as np

from cikg_jax.training import steps

AXIS = "devices"


def num_devices(requested: int) -> int:
  available = jax.local_device_count()
  n = available if requested <= 0 else requested
  if n > available:
    raise ValueError(
      f"parallel.num_devices={requested} but only {available} local devices "
      "(on CPU, XLA_FLAGS=--xla_force_host_platform_device_count=N simulates N)"
    )
  return n


def shard_batch(batch: Dict[str, np.ndarray], n: int):
  """(B, ...) arrays -> (n, B/n, ...)."""
  out = {}
  for k, v in batch.items():
    v = np.asarray(v)
    if v.shape[0] % n:
      raise ValueError(
        f"batch of {v.shape[0]} rows does not split over {n} devices; choose "
        "a batch size divisible by the device count"
      )
    out[k] = v.reshape((n, v.shape[0] // n) + v.shape[1:])
  return out


def replicate(tree, n: int):
  return jax.tree_util.tree_map(lambda x: jnp.broadcast_to(x, (n,) + jnp.shape(x)), tree)


def unreplicate(tree):
  return jax.tree_util.tree_map(lambda x: x[0], tree)


def make_steps(net, tx, kge_tx, mask_rate, use_kge: bool):
  """The one train and TransE step (steps.py) under jax.pmap: state and batch mapped, key and
  graphs broadcast, the shards' gradients reduced after autodiff."""
  shards = steps.BatchShards(AXIS)
  step = jax.pmap(
    steps.make_train_step(net, tx, mask_rate, shards),
    axis_name=AXIS,
    in_axes=(0, 0, None, None),
    donate_argnums=0,
  )
  kge = (
    jax.pmap(steps.make_kge_step(net, kge_tx, shards), axis_name=AXIS, donate_argnums=0)
    if use_kge
    else None
  )
  return step, kge

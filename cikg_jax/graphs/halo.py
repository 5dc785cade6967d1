"""The halo exchange of the graph-parallel modes: each propagation layer, a device receives only the
sender rows its edge block reads (its halo) from the devices that own them, instead of the whole
Np x d layer input (an all_gather).

The plan, built on the host once per graph. Device k owns rows [kB, (k+1)B) and the edges into
them. For every other owner o, the distinct senders of k's edges that o owns are listed in
ascending order and padded to H, the longest such list over all pairs (k, o != k): `send[o, k]`
holds them as o's local row ids (send[k, k] is padding). Device k's edge senders are renumbered
into its buffer [its own B rows; D chunks of H received rows]: its own sender s stays s - kB,
sender s of owner o at position j of that list becomes B + o * H + j.

One layer on device k: rows = x_local[send[k].reshape(-1)] (D*H x d), `lax.all_to_all` over the
axis (chunk k of device o's rows goes to device k and lands as chunk o), the buffer is x_local
and those rows, then the edge block times the buffer. Autodiff transposes it all: all_to_all
returns the received rows' cotangent to their owners, the gather scatter-adds it onto their rows.
The buffer is B + D*H rows; with a node order that keeps neighbours together
(cikg_jax.graphs.partition) H is far below B, and the buffer far below the Np rows of an all_gather.
"""

from __future__ import annotations

from typing import Dict

from jax import lax
import jax.numpy as jnp
import numpy as np


def plan(senders_per_block, n_blocks: int, block: int) -> Dict[str, np.ndarray]:
  """The exchange plan for `n_blocks` receiver blocks of `block` rows.

  senders_per_block[k]: global sender ids of block k's edges (int array, any order, may repeat).
  Returns {"send": (D, D, H) int32 local row ids, send[o, k] what owner o sends to block k (0 on
  padding); "halo_senders": list of D int32 arrays, block k's senders as buffer positions;
  "halo": H; "needed": (D, D) the unpadded list lengths needed[k, o] (needed[k, k]: the block's
  own distinct senders, read in place)}.
  """
  d = n_blocks
  lists = [[None] * d for _ in range(d)]
  needed = np.zeros((d, d), np.int64)
  for k, senders in enumerate(senders_per_block):
    senders = np.asarray(senders, np.int64)
    if senders.size and (senders.min() < 0 or senders.max() >= d * block):
      raise ValueError(f"block {k}: sender ids outside [0, {d * block})")
    distinct = np.unique(senders)
    owner = distinct // block
    for o in range(d):
      lists[k][o] = distinct[owner == o]
      needed[k, o] = len(lists[k][o])
  remote = needed * (1 - np.eye(d, dtype=np.int64))
  halo = max(1, int(remote.max()))
  send = np.zeros((d, d, halo), np.int32)
  halo_senders = []
  for k, senders in enumerate(senders_per_block):
    senders = np.asarray(senders, np.int64)
    position = np.empty(len(senders), np.int64)
    owner = senders // block
    for o in range(d):
      mine = owner == o
      if o == k:
        position[mine] = senders[mine] - k * block
        continue
      ids = lists[k][o]
      send[o, k, : len(ids)] = ids - o * block
      position[mine] = block + o * halo + np.searchsorted(ids, senders[mine])
    halo_senders.append(position.astype(np.int32))
  return {"send": send, "halo_senders": halo_senders, "halo": halo, "needed": needed}


def exchange(x_local: jnp.ndarray, send: jnp.ndarray, axis_name: str) -> jnp.ndarray:
  """Inside shard_map over `axis_name`: this device's buffer, its B rows of x then the D*H rows
  the others send it, given its part of the plan, send (D, H) or (D * H,)."""
  rows = x_local[send.reshape(-1)]
  received = lax.all_to_all(rows, axis_name, split_axis=0, concat_axis=0, tiled=True)
  return jnp.concatenate([x_local, received])


def stats(p: Dict[str, np.ndarray], block: int) -> Dict[str, object]:
  """What the plan costs per layer, in rows per device: the buffer B + D*H against the Np rows
  an all_gather brings, the rows received, and how much of what is sent is padding."""
  d = p["send"].shape[0]
  received = d * p["halo"]
  remote = (p["needed"] * (1 - np.eye(d, dtype=np.int64))).sum(axis=1)
  return {
    "halo": int(p["halo"]),
    "buffer_rows": int(block + received),
    "all_gather_rows": int(d * block),
    "buffer_fraction": (block + received) / (d * block),
    "remote_rows_per_block": remote.tolist(),
    "padding_fraction": float(1.0 - remote.mean() / received) if received else 0.0,
  }

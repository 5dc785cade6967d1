"""Seeded, vectorised samplers: BPR mini-batches with uniform negatives, and TransE triples.

Randomness comes from `numpy.random.Generator`s seeded by (seed, epoch), so an epoch's batches are
a function of the epoch number alone: a resumed run sees exactly the batches it would have seen.
"""

from __future__ import annotations

from typing import Dict

import numpy as np


class NegativeSampler:
  """Uniform negative items that are never one of the user's training items."""

  def __init__(self, train_pairs: np.ndarray, n_users: int, n_items: int):
    self.n_items = n_items
    self._keys = np.unique(train_pairs[:, 0].astype(np.int64) * n_items + train_pairs[:, 1])
    counts = np.bincount(train_pairs[:, 0], minlength=n_users)
    full = np.flatnonzero(counts >= n_items)
    if len(full):
      raise ValueError(f"user {full[0]} has interacted with every item: no negative exists")

  def is_positive(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
    keys = users.astype(np.int64) * self.n_items + items
    pos = np.searchsorted(self._keys, keys)
    pos = np.minimum(pos, len(self._keys) - 1)
    return self._keys[pos] == keys

  def sample(self, users: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    items = rng.integers(self.n_items, size=len(users))
    bad = np.flatnonzero(self.is_positive(users, items))
    while len(bad):  # rejection sampling; terminates since every user has a negative
      items[bad] = rng.integers(self.n_items, size=len(bad))
      bad = bad[self.is_positive(users[bad], items[bad])]
    return items


def epoch_rng(seed: int, epoch: int, stream: int = 0) -> np.random.Generator:
  return np.random.default_rng([seed, epoch, stream])


def bpr_epoch(
  train_pairs: np.ndarray, sampler: NegativeSampler, batch_size: int, rng: np.random.Generator
) -> Dict[str, np.ndarray]:
  """Every training interaction once, shuffled, with one negative each; shaped
  (n_batches, batch_size), the last batch padded and flagged by `mask` (static shapes)."""
  order = rng.permutation(len(train_pairs))
  users = train_pairs[order, 0]
  pos = train_pairs[order, 1]
  neg = sampler.sample(users, rng)
  n = len(order)
  n_batches = -(-n // batch_size)
  total = n_batches * batch_size

  def pad(x):
    out = np.zeros(total, np.int32)
    out[:n] = x
    return out.reshape(n_batches, batch_size)

  mask = np.zeros(total, np.float32)
  mask[:n] = 1.0
  return {
    "users": pad(users),
    "pos": pad(pos),
    "neg": pad(neg),
    "mask": mask.reshape(n_batches, batch_size),
  }


def user_uniform_epoch(
  train_pairs: np.ndarray, sampler: NegativeSampler, batch_size: int, rng: np.random.Generator
) -> Dict[str, np.ndarray]:
  """KGAT's CF batches (its loader's `_generate_train_cf_batch`): len(train) // batch_size + 1
  batches, each of `batch_size` distinct users drawn uniformly among those with training items
  (with replacement where there are fewer users than that), one of the user's items drawn
  uniformly and one negative each. Every user weighs the same, however many items they have
  (bpr_epoch weighs users by their interactions)."""
  order = np.argsort(train_pairs[:, 0], kind="stable")
  users_sorted = train_pairs[order, 0]
  items_sorted = train_pairs[order, 1]
  have, start, count = np.unique(users_sorted, return_index=True, return_counts=True)
  n_batches = user_uniform_batches(len(train_pairs), batch_size)
  if batch_size <= len(have):
    keys = rng.random((n_batches, len(have)))
    rows = np.argpartition(keys, batch_size - 1, axis=1)[:, :batch_size]
  else:
    rows = rng.integers(len(have), size=(n_batches, batch_size))
  users = have[rows]
  pos = items_sorted[start[rows] + (rng.random(rows.shape) * count[rows]).astype(np.int64)]
  neg = sampler.sample(users.reshape(-1), rng).reshape(users.shape)
  return {
    "users": users.astype(np.int32),
    "pos": pos.astype(np.int32),
    "neg": neg.astype(np.int32),
    "mask": np.ones(users.shape, np.float32),
  }


def user_uniform_batches(n_pairs: int, batch_size: int) -> int:
  """Mini-batches per epoch of user_uniform_epoch (KGAT's n_train // batch_size + 1)."""
  return n_pairs // batch_size + 1


# config.train.cf_sampling -> the epoch's batches (cf_batches: how many)
CF_EPOCHS = {"interactions": bpr_epoch, "users": user_uniform_epoch}


def cf_batches(mode: str, n_pairs: int, batch_size: int) -> int:
  """Mini-batches per epoch of the CF sampling `mode` (config.train.cf_sampling)."""
  return {"interactions": num_batches, "users": user_uniform_batches}[mode](n_pairs, batch_size)


def kge_relation_count(ds, views: str) -> int:
  """Relation rows TransE needs: paper: KG relations + `interact`; release: KG relations, their
  inverses, `interact` and `be-interacted`."""
  return ds.n_relations + 1 if views == "paper" else 2 * ds.n_relations + 2


def kge_triples(ds, views: str = "paper"):
  """TransE triples in node-row ids and the number of TransE steps per epoch (docs/method.md §3.4).

  paper: KG triples + user->item `interact` triples (relation n_relations), n_triples // 4096
  steps. release: as the release builds them: KG triples and their inverses (relation r + R),
  user->item (2R) and item->user (2R + 1) triples, and 2 |KG| // batch steps."""
  r = ds.n_relations
  kg = ds.kg.copy()
  kg[:, [0, 2]] += ds.item_offset
  users, items = ds.train[:, 0], ds.train[:, 1] + ds.item_offset
  ui = np.stack([users, np.full(len(users), r), items], axis=1)
  if views == "paper":
    return np.concatenate([kg, ui]).astype(np.int64), None
  inverse = np.stack([kg[:, 2], kg[:, 1] + r, kg[:, 0]], axis=1)
  ui = np.stack([users, np.full(len(users), 2 * r), items], axis=1)
  iu = np.stack([items, np.full(len(users), 2 * r + 1), users], axis=1)
  return np.concatenate([kg, inverse, ui, iu]).astype(np.int64), 2 * len(kg)


def kge_epoch(
  triples: np.ndarray,
  n_steps: int,
  batch_size: int,
  tail_low: int,
  tail_high: int,
  rng: np.random.Generator,
) -> Dict[str, np.ndarray]:
  """n_steps batches of triples drawn at random, each with a uniform negative tail row in
  [tail_low, tail_high)."""
  idx = rng.integers(len(triples), size=(n_steps, batch_size))
  t = triples[idx]
  neg = rng.integers(tail_low, tail_high, size=(n_steps, batch_size))
  return {
    "head": t[..., 0].astype(np.int32),
    "relation": t[..., 1].astype(np.int32),
    "tail": t[..., 2].astype(np.int32),
    "neg_tail": neg.astype(np.int32),
  }


def num_batches(n_pairs: int, batch_size: int) -> int:
  """Mini-batches per epoch of bpr_epoch (the last one padded)."""
  return -(-n_pairs // batch_size)


class KGESampler:
  """The TransE triples of a dataset and their per-epoch batches: `steps` batches of
  `batch_size` random triples, each with a uniform negative tail. Paper views draw the negative
  among the entity rows; release views in [0, n_entities), mostly user rows, as the release does
  (docs/method.md §6)."""

  def __init__(self, ds, views: str, batch_size: int):
    self.triples, n_for_steps = kge_triples(ds, views)
    self.batch_size = batch_size
    self.steps = max(1, (n_for_steps or len(self.triples)) // batch_size)
    self.tail_range = (
      (ds.item_offset, ds.item_offset + ds.n_entities) if views == "paper" else (0, ds.n_entities)
    )

  def epoch(self, seed: int, epoch: int) -> Dict[str, np.ndarray]:
    return kge_epoch(
      self.triples, self.steps, self.batch_size, *self.tail_range, epoch_rng(seed, epoch, 1)
    )

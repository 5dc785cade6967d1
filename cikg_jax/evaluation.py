"""Full-ranking top-K evaluation on device (docs/method.md §5).

Users are scored against all items in fixed-size chunks (one compiled function, the last chunk
padded), with the user's known items (training; for test under valid selection also validation)
pushed to -inf before `lax.top_k`. Metrics are computed per user on device and averaged on the
host, so they do not depend on the chunk size, and per-user values feed the sparsity groups.
"""

from __future__ import annotations

import dataclasses
from typing import Dict, List, Sequence

import jax
import jax.numpy as jnp
import numpy as np

METRICS = ("recall", "ndcg", "precision", "hit")


@dataclasses.dataclass
class EvalSet:
  """Host arrays of one evaluation split, chunked and padded to static shapes."""

  users: np.ndarray  # (n_chunks, C) user ids (padding: 0)
  valid: np.ndarray  # (n_chunks, C) bool, False for padding rows
  truth: np.ndarray  # (n_chunks, C, G) relevant items, padded with n_items
  exclude: np.ndarray  # (n_chunks, C, X) items to exclude, padded with n_items
  n_items: int

  @property
  def user_ids(self) -> np.ndarray:
    return self.users[self.valid]


def _padded_lists(lists: List[np.ndarray], pad: int, width: int | None = None) -> np.ndarray:
  width = max(1, max((len(x) for x in lists), default=1)) if width is None else width
  out = np.full((len(lists), width), pad, dtype=np.int32)
  for r, x in enumerate(lists):
    out[r, : len(x)] = x
  return out


def _group(pairs: np.ndarray, n_users: int) -> List[np.ndarray]:
  order = np.argsort(pairs[:, 0], kind="stable")
  pairs = pairs[order]
  bounds = np.searchsorted(pairs[:, 0], np.arange(n_users + 1))
  return [pairs[bounds[u] : bounds[u + 1], 1] for u in range(n_users)]


def make_eval_set(
  truth_pairs: np.ndarray,
  exclude_pairs: Sequence[np.ndarray],
  n_users: int,
  n_items: int,
  chunk_size: int,
) -> EvalSet:
  truth = _group(truth_pairs, n_users)
  excl_parts = [_group(p, n_users) for p in exclude_pairs if len(p)]
  exclude = [
    np.concatenate([part[u] for part in excl_parts]) if excl_parts else np.zeros(0, int)
    for u in range(n_users)
  ]
  users = np.array([u for u in range(n_users) if len(truth[u])], dtype=np.int32)
  n_chunks = max(1, -(-len(users) // chunk_size))
  padded = np.zeros(n_chunks * chunk_size, np.int32)
  padded[: len(users)] = users
  valid = np.zeros(n_chunks * chunk_size, bool)
  valid[: len(users)] = True
  t = _padded_lists([truth[u] for u in users], n_items)
  x = _padded_lists([exclude[u] for u in users], n_items)
  t_full = np.full((n_chunks * chunk_size, t.shape[1]), n_items, np.int32)
  x_full = np.full((n_chunks * chunk_size, x.shape[1]), n_items, np.int32)
  t_full[: len(users)] = t
  x_full[: len(users)] = x
  c = chunk_size
  return EvalSet(
    users=padded.reshape(-1, c),
    valid=valid.reshape(-1, c),
    truth=t_full.reshape(n_chunks, c, -1),
    exclude=x_full.reshape(n_chunks, c, -1),
    n_items=n_items,
  )


def chunk_metrics(user_emb, item_emb, users, truth, exclude, ks: Sequence[int]):
  """Per-user metrics (C, len(METRICS) * len(ks)) for one chunk; order: metric-major per k."""
  n_items = item_emb.shape[0]
  rows = jnp.arange(users.shape[0])[:, None]
  scores = user_emb[users] @ item_emb.T
  scores = scores.at[rows, exclude].set(-jnp.inf, mode="drop")
  max_k = min(max(ks), n_items)
  _, top = jax.lax.top_k(scores, max_k)
  relevant = jnp.zeros((users.shape[0], n_items), bool).at[rows, truth].set(True, mode="drop")
  hits = jnp.take_along_axis(relevant, top, axis=1).astype(jnp.float32)
  n_truth = jnp.sum(truth < n_items, axis=1).astype(jnp.float32)
  discount = 1.0 / jnp.log2(jnp.arange(max_k, dtype=jnp.float32) + 2.0)
  ideal_cum = jnp.cumsum(discount)
  out = []
  for k in ks:
    kk = min(k, max_k)
    n_hit = jnp.sum(hits[:, :kk], axis=1)
    dcg = jnp.sum(hits[:, :kk] * discount[:kk], axis=1)
    idcg = ideal_cum[jnp.clip(jnp.minimum(n_truth, kk).astype(jnp.int32) - 1, 0, max_k - 1)]
    safe = jnp.maximum(n_truth, 1.0)
    out += [n_hit / safe, dcg / idcg, n_hit / k, (n_hit > 0).astype(jnp.float32)]
  return jnp.stack(out, axis=1)


_chunk_metrics_jit = jax.jit(chunk_metrics, static_argnames=("ks",))


def per_user_metrics(user_emb, item_emb, eval_set: EvalSet, ks: Sequence[int]) -> np.ndarray:
  """(n_eval_users, len(ks) * len(METRICS)) in the order of `metric_names(ks)`."""
  ks = tuple(int(k) for k in ks)
  parts = [
    _chunk_metrics_jit(
      user_emb, item_emb, eval_set.users[c], eval_set.truth[c], eval_set.exclude[c], ks
    )
    for c in range(len(eval_set.users))
  ]
  arr = np.asarray(jax.device_get(jnp.concatenate(parts, axis=0)))
  return arr[eval_set.valid.reshape(-1)]


def metric_names(ks: Sequence[int]) -> List[str]:
  return [f"{m}@{k}" for k in ks for m in METRICS]


def summarize(per_user: np.ndarray, ks: Sequence[int]) -> Dict[str, float]:
  means = per_user.mean(axis=0) if len(per_user) else np.zeros(per_user.shape[1])
  return {name: float(v) for name, v in zip(metric_names(ks), means)}


def user_groups(train_counts: np.ndarray, users: np.ndarray, n_groups: int):
  """Quantile groups of the evaluated users by training-interaction count (sparsest first)."""
  counts = train_counts[users]
  order = np.argsort(counts, kind="stable")
  groups = []
  for g, idx in enumerate(np.array_split(order, n_groups)):
    if len(idx):
      groups.append((g, idx, int(counts[idx].min()), int(counts[idx].max())))
  return groups


def equal_interaction_groups(train_counts: np.ndarray, users: np.ndarray, n_groups: int):
  """Groups of the evaluated users, sparsest first, each holding about 1/n of their total training
  interactions (KGAT's and KGIN's sparsity protocol): the sparse groups then hold many users.
  A user goes to the group in which the running total before them falls."""
  counts = train_counts[users]
  order = np.argsort(counts, kind="stable")
  before = np.concatenate([[0], np.cumsum(counts[order])[:-1]]) if len(order) else np.zeros(0)
  total = max(int(counts.sum()), 1)
  which = np.minimum((before * n_groups) // total, n_groups - 1).astype(int)
  groups = []
  for g in range(n_groups):
    idx = order[which == g]
    if len(idx):
      groups.append((g, idx, int(counts[idx].min()), int(counts[idx].max())))
  return groups


GROUPINGS = {"quantile": user_groups, "equal_interactions": equal_interaction_groups}


def grouped_summary(
  per_user: np.ndarray,
  train_counts: np.ndarray,
  users: np.ndarray,
  ks: Sequence[int],
  n_groups: int,
  scheme: str = "quantile",
) -> List[Dict]:
  out = []
  for g, idx, lo, hi in GROUPINGS[scheme](train_counts, users, n_groups):
    row = {
      "group": g,
      "n_users": int(len(idx)),
      "train_interactions": [lo, hi],
      "train_interactions_total": int(train_counts[users[idx]].sum()),
    }
    row.update(summarize(per_user[idx], ks))
    out.append(row)
  return out


def evaluate(
  user_emb, item_emb, eval_set: EvalSet, ks: Sequence[int], train_counts=None, n_groups: int = 0
):
  """Averages over users with at least one relevant item; optional sparsity groups."""
  per_user = per_user_metrics(user_emb, item_emb, eval_set, ks)
  result = summarize(per_user, ks)
  groups = (
    grouped_summary(per_user, train_counts, eval_set.user_ids, ks, n_groups)
    if n_groups and train_counts is not None
    else None
  )
  return result, groups


def evaluate_groups(
  user_emb, item_emb, eval_set: EvalSet, ks: Sequence[int], train_counts: np.ndarray, n_groups: int
):
  """Overall metrics and the sparsity groups of every scheme in GROUPINGS, from one ranking."""
  per_user = per_user_metrics(user_emb, item_emb, eval_set, ks)
  return summarize(per_user, ks), {
    scheme: grouped_summary(per_user, train_counts, eval_set.user_ids, ks, n_groups, scheme)
    for scheme in GROUPINGS
  }

"""A KGAT-format dataset of chosen size with power-law degrees, for the multi-device and scaling
work: graphs far larger than the paper's (e.g. 1M users, 200k items, 1M entities, 50M edges).

User activity, item popularity, entity popularity and interest popularity all follow Zipf-like
laws (exponent `alpha`), as in real interaction logs and knowledge graphs; 20% of each user's
items (at least one, when the user has two) are held out as test. Vectorised numpy, written in
chunks, so 50M edges take minutes and a few GB of memory. Written to disk and read back through
the normal loader (config.dataset = "synthetic_large", configs/synthetic_large.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from typing import Dict

import numpy as np

NAME = "synthetic_large"
FORMAT = 1  # bumped when generate() writes different files


def _zipf_weights(n: int, alpha: float, rng: np.random.Generator) -> np.ndarray:
  """Popularity weights w_r ~ r^-alpha over a random permutation of n ids."""
  w = np.arange(1, n + 1, dtype=np.float64) ** -alpha
  return rng.permutation(w / w.sum())


def _sample(n: int, size: int, p: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """`size` ids of range(n) drawn with probabilities p (inverse CDF, vectorised)."""
  cdf = np.cumsum(p)
  return np.minimum(np.searchsorted(cdf, rng.random(size) * cdf[-1]), n - 1).astype(np.int64)


def _write_grouped(path: str, users: np.ndarray, items: np.ndarray, chunk: int = 200_000) -> None:
  """`u i1 i2 ...` lines, users ascending (pairs sorted by user)."""
  starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
  ends = np.r_[starts[1:], len(users)]
  with open(path, "w") as f:
    for c in range(0, len(starts), chunk):
      lines = []
      for s, e in zip(starts[c : c + chunk], ends[c : c + chunk]):
        lines.append(f"{users[s]} " + " ".join(map(str, items[s:e].tolist())))
      f.write("\n".join(lines) + "\n")


def _write_rows(path: str, rows: np.ndarray, header: str = "", chunk: int = 1_000_000) -> None:
  with open(path, "w") as f:
    if header:
      f.write(header + "\n")
    for c in range(0, len(rows), chunk):
      block = rows[c : c + chunk]
      f.write("\n".join(" ".join(map(str, r)) for r in block.tolist()) + "\n")


def generate(
  out_dir: str,
  n_users: int = 1_000_000,
  n_items: int = 200_000,
  n_entities: int = 1_000_000,
  n_interactions: int = 30_000_000,
  n_kg_triples: int = 15_000_000,
  n_relations: int = 20,
  n_interests: int = 20_000,
  n_user_interests: int = 5_000_000,
  alpha: float = 1.0,
  seed: int = 0,
) -> Dict[str, int]:
  """Writes <out_dir>/synthetic_large/ and returns its counts after de-duplication."""
  if n_entities < n_items:
    raise ValueError("n_entities must include the items (n_entities >= n_items)")
  rng = np.random.default_rng(seed)
  root = os.path.join(out_dir, NAME)
  os.makedirs(root, exist_ok=True)

  # Interactions: a user's and an item's share of the edges both follow Zipf laws; every user has
  # at least 2 distinct items so that train and test are non-empty.
  user_p = _zipf_weights(n_users, alpha, rng)
  item_p = _zipf_weights(n_items, alpha, rng)
  extra = max(0, n_interactions - 2 * n_users)
  users = np.concatenate([np.repeat(np.arange(n_users), 2), _sample(n_users, extra, user_p, rng)])
  items = _sample(n_items, len(users), item_p, rng)
  keys = np.unique(users * n_items + items)
  users, items = keys // n_items, keys % n_items
  short = np.bincount(users, minlength=n_users) < 2  # duplicates left some users with one item
  if short.any():
    fill = np.flatnonzero(short)
    more = np.stack([fill, (items[np.searchsorted(users, fill)] + 1) % n_items], axis=1)
    keys = np.unique(np.r_[keys, more[:, 0] * n_items + more[:, 1]])
    users, items = keys // n_items, keys % n_items
  # Test: a random 20% of each user's items, at least one; the rest train.
  order = np.lexsort((rng.random(len(users)), users))
  users, items = users[order], items[order]
  start = np.r_[0, np.flatnonzero(users[1:] != users[:-1]) + 1]
  rank = np.arange(len(users)) - np.repeat(start, np.diff(np.r_[start, len(users)]))
  deg = np.bincount(users, minlength=n_users)
  is_test = rank < np.maximum(1, np.floor(0.2 * deg[users]).astype(np.int64))
  _write_grouped(os.path.join(root, "train.txt"), users[~is_test], items[~is_test])
  _write_grouped(os.path.join(root, "test.txt"), users[is_test], items[is_test])

  # KG: heads over all entities, tails by entity popularity, relations by their own Zipf law.
  ent_p = _zipf_weights(n_entities, alpha, rng)
  rel_p = _zipf_weights(n_relations, alpha, rng)
  h = rng.integers(n_entities, size=n_kg_triples)
  t = _sample(n_entities, n_kg_triples, ent_p, rng)
  r = _sample(n_relations, n_kg_triples, rel_p, rng)
  kg = np.unique(np.stack([h, r, t], axis=1), axis=0)
  kg = kg[kg[:, 0] != kg[:, 2]]
  _write_rows(os.path.join(root, "kg_final.txt"), kg)

  # Interests: node ids above the entity range, popularity by a Zipf law.
  int_p = _zipf_weights(n_interests, alpha, rng)
  iu = np.r_[np.arange(n_users), _sample(n_users, max(0, n_user_interests - n_users), user_p, rng)]
  ii = n_entities + _sample(n_interests, len(iu), int_p, rng)
  ui = np.unique(np.stack([iu, ii], axis=1), axis=0)
  _write_rows(os.path.join(root, "user_interest_clustered.txt"), ui)

  with open(os.path.join(root, "item_list.txt"), "w") as f:
    f.write("org_id remap_id\n" + "".join(f"{i} {i}\n" for i in range(n_items)))
  with open(os.path.join(root, "entity_list.txt"), "w") as f:
    f.write("org_id remap_id\n" + "".join(f"{e} {e}\n" for e in range(n_entities)))
  return {
    "users": n_users,
    "items": n_items,
    "entities": n_entities,
    "interactions": int(len(users)),
    "train": int((~is_test).sum()),
    "test": int(is_test.sum()),
    "kg_triples": int(len(kg)),
    "user_interest_edges": int(len(ui)),
  }


def ensure(directory: str | None = None, **params) -> str:
  """Generates the dataset once per parameter set and returns its data_dir."""
  key = hashlib.sha1(json.dumps(dict(params, format=FORMAT), sort_keys=True).encode()).hexdigest()
  base = directory or os.path.join(
    os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")),
    "cikg_jax",
    f"{NAME}-{key[:10]}",
  )
  marker = os.path.join(base, NAME, f".format-{FORMAT}")
  if os.path.exists(marker):
    from cikg_jax.data import synthetic

    synthetic.check_made_with(
      marker, params, "synthetic_large", lambda made: made["params"], generate
    )
  else:
    os.makedirs(base, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=base)
    counts = generate(tmp, **params)
    os.makedirs(os.path.join(base, NAME), exist_ok=True)
    for name in os.listdir(os.path.join(tmp, NAME)):
      os.replace(os.path.join(tmp, NAME, name), os.path.join(base, NAME, name))
    os.rmdir(os.path.join(tmp, NAME))
    os.rmdir(tmp)
    with open(marker, "w") as f:
      f.write(json.dumps(dict(params=params, counts=counts), sort_keys=True) + "\n")
  return base

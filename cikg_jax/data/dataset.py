"""A dataset in memory: validated interactions, KG triples, user interests, the split protocol and
the node layout `[users | items (= first entities) | other entities | interest nodes]`."""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Dict, List, Optional
import warnings

import numpy as np

from cikg_jax.data import files

log = logging.getLogger(__name__)

DATA_DIR_ENV = "CIKG_DATA_DIR"


@dataclasses.dataclass(frozen=True)
class Dataset:
  name: str
  path: str
  n_users: int
  n_items: int
  n_entities: int  # KG entities including items (ids 0..n_entities-1)
  n_relations: int  # KG relations (0 when there is no KG)
  n_interests: int  # interest rows: the whole id range above the entities (docs/method.md §1, §6)
  train: np.ndarray  # (n, 2) [user, item], grouped by user, file order within a user
  valid: np.ndarray  # (n, 2); empty under selection="test"
  test: np.ndarray  # (n, 2)
  kg: np.ndarray  # (n, 3) [head, relation, tail] entity ids; (0, 3) without a KG
  user_interest: np.ndarray  # (n, 2) [user, interest id (unshifted, >= n_entities)]
  selection: str = "valid"

  # ---- node layout -------------------------------------------------------------------------
  @property
  def n_nodes(self) -> int:
    return self.n_users + self.n_entities + self.n_interests

  @property
  def item_offset(self) -> int:
    return self.n_users

  @property
  def interest_offset(self) -> int:
    return self.n_users + self.n_entities

  @property
  def has_kg(self) -> bool:
    return len(self.kg) > 0

  def connected_interest_ids(self) -> np.ndarray:
    """Interest ids (unshifted) that have at least one user edge."""
    return np.unique(self.user_interest[:, 1])

  def describe(self) -> str:
    per_user = np.bincount(self.train[:, 0], minlength=self.n_users)
    lines = [
      f"dataset {self.name} ({self.path}), selection={self.selection}",
      f"  users {self.n_users:,}  items {self.n_items:,}  entities {self.n_entities:,}  "
      f"relations {self.n_relations}  interest rows {self.n_interests} "
      f"({len(self.connected_interest_ids())} with edges)  nodes {self.n_nodes:,}",
      f"  train {len(self.train):,}  valid {len(self.valid):,}  test {len(self.test):,}  "
      f"train items/user median {int(np.median(per_user))}",
      f"  KG triples {len(self.kg):,}  user-interest edges {len(self.user_interest):,}  "
      f"users with interests {len(np.unique(self.user_interest[:, 0])):,}",
    ]
    return "\n".join(lines)


def resolve_data_dir(data_dir: Optional[str]) -> str:
  d = data_dir or os.environ.get(DATA_DIR_ENV)
  if not d:
    raise ValueError(
      f"no data directory: set config.data_dir or the {DATA_DIR_ENV} environment "
      "variable (e.g. ../shared/data), or fetch one with "
      "`python -m cikg_jax.data.download`"
    )
  return d


def _pairs(user_items: Dict[int, List[int]]) -> np.ndarray:
  rows = [(u, i) for u in sorted(user_items) for i in user_items[u]]
  return np.asarray(rows, dtype=np.int64).reshape(-1, 2)


def split_validation(train: Dict[int, List[int]], fraction: float, seed: int):
  """Holds out a seeded `fraction` of each user's training items, so model selection never looks
  at the test set. Rounding is stochastic (n*f rounded up with probability equal to its fractional
  part) so the held-out share is `fraction` in expectation for every user and overall, even when
  most users have fewer than 8 items; at least one item stays in training."""
  rng = np.random.default_rng(seed)
  fit, valid = {}, {}
  for u in sorted(train):
    items = list(train[u])
    want = len(items) * fraction
    n_valid = int(np.floor(want)) + int(rng.random() < want - np.floor(want))
    n_valid = min(n_valid, len(items) - 1)
    held = (
      set(rng.choice(len(items), size=n_valid, replace=False).tolist()) if n_valid > 0 else set()
    )
    fit[u] = [it for k, it in enumerate(items) if k not in held]
    valid[u] = [it for k, it in enumerate(items) if k in held]
  return fit, valid


def model_fitting_split(
  train: Dict[int, List[int]], selection: str, valid_fraction: float, split_seed: int
):
  """(fit, valid) histories of a protocol: the one function the trainer and the LLM prompt builder
  (inference/generate.py) share, so prompts never see the items model selection is done on."""
  if selection == "valid":
    return split_validation(train, valid_fraction, split_seed)
  return train, {}


def load_dataset(
  data_dir: Optional[str],
  name: str,
  selection: str = "valid",
  valid_fraction: float = 0.125,
  seed: int = 2024,
  interest_file: Optional[str] = None,
) -> Dataset:
  """Reads and validates one dataset directory and builds the split of the chosen protocol."""
  if selection not in ("valid", "test"):
    raise ValueError(f"selection must be 'valid' or 'test', got {selection!r}")
  root = os.path.join(resolve_data_dir(data_dir), name)
  if not os.path.isdir(root):
    raise FileNotFoundError(
      f"{root}: dataset directory not found (datasets: dbbook2014, "
      "book-crossing, ml1m; fetch with `python -m cikg_jax.data.download`; "
      "your own: README 'Bring your own dataset')"
    )
  train_path, test_path = os.path.join(root, "train.txt"), os.path.join(root, "test.txt")

  item_path, entity_path = (
    os.path.join(root, "item_list.txt"),
    os.path.join(root, "entity_list.txt"),
  )
  item_list = files.read_id_list(item_path) if files.present(item_path) else None
  entity_list = files.read_id_list(entity_path) if files.present(entity_path) else None
  if item_list is not None and entity_list is not None:
    files.check_items_are_entities(item_list, entity_list)
  n_listed_items = len(item_list) if item_list is not None else None
  train = files.read_user_items(train_path, n_items=n_listed_items)
  test = files.read_user_items(test_path, n_items=n_listed_items, allow_empty=True)
  files.check_disjoint(train, test, train_path, test_path)
  if not any(test.values()):
    files._fail(test_path, None, "no test interactions: every test metric would be 0")
  n_users = max(train) + 1
  if n_users > len(train):  # found without allocating per user id: an id may be absurdly large
    uids = np.sort(np.fromiter(train.keys(), np.int64, len(train)))
    first_missing = int(np.flatnonzero(uids != np.arange(len(uids)))[0])
    files._fail(
      train_path,
      None,
      f"user {first_missing} has no training items (no line); users "
      "must be numbered 0..n-1 and each needs at least one training item (the largest user id, "
      f"{n_users - 1} on line {train.line_of[n_users - 1]}, makes {n_users:,} users of which "
      f"{len(train):,} have a line; data from elsewhere: `python -m cikg_jax.data.convert`, "
      "README 'Bring your own dataset')",
    )
  if n_listed_items is None:
    _check_dense_items(train, test, train_path, test_path)
  all_items = [i for v in train.values() for i in v] + [i for v in test.values() for i in v]
  n_items = n_listed_items if n_listed_items is not None else max(all_items) + 1

  n_listed_entities = len(entity_list) if entity_list is not None else None
  kg_path = os.path.join(root, "kg_final.txt")
  if files.present(kg_path):
    kg = files.read_triples(kg_path, n_entities=n_listed_entities, n_items=n_items)
  else:
    warnings.warn(
      f"{kg_path} not found: training without item-side knowledge (no KG edges, no "
      "TransE). Fetch it with `python -m cikg_jax.data.download` where a network is "
      "available.",
      stacklevel=2,
    )
    kg = np.zeros((0, 3), dtype=np.int64)
  n_entities = max(n_items, n_listed_entities or 0, int(kg[:, [0, 2]].max()) + 1 if len(kg) else 0)
  n_relations = int(kg[:, 1].max()) + 1 if len(kg) else 0

  ui_path = interest_file or os.path.join(root, "user_interest_clustered.txt")
  if files.present(ui_path):
    user_interest = files.read_pairs(
      ui_path,
      n_users=n_users,
      min_second=n_entities,
      why_min=lambda: (
        _entity_range_source(kg_path, n_entities - 1)
        if len(kg) and int(kg[:, [0, 2]].max()) + 1 == n_entities
        else ""
      ),
    )
    n_interests = int(user_interest[:, 1].max()) + 1 - n_entities
  else:
    if interest_file:
      files._fail(ui_path, None, "file not found")
    warnings.warn(f"{ui_path} not found: no interest nodes", stacklevel=2)
    user_interest = np.zeros((0, 2), dtype=np.int64)
    n_interests = 0

  fit, valid = model_fitting_split(train, selection, valid_fraction, seed)
  ds = Dataset(
    name=name,
    path=root,
    n_users=n_users,
    n_items=n_items,
    n_entities=n_entities,
    n_relations=n_relations,
    n_interests=n_interests,
    train=_pairs(fit),
    valid=_pairs(valid),
    test=_pairs(test),
    kg=kg,
    user_interest=user_interest,
    selection=selection,
  )
  log.info("%s", ds.describe())
  return ds


def _check_dense_items(train, test, train_path: str, test_path: str) -> None:
  """Without item_list.txt the largest item id sizes the item table: refused when it lies far
  above the ids in use (files.check_dense_ids), naming its line, before anything is allocated."""
  ids, where = [], []
  for path, user_items in ((train_path, train), (test_path, test)):
    for u, items in user_items.items():
      ids += items
      where += [(path, user_items.line_of[u])] * len(items)
  ids = np.asarray(ids, np.int64)
  top_path = where[int(np.argmax(ids))][0]
  files.check_dense_ids(top_path, ids, [line for _, line in where], 0, "item")


def _entity_range_source(kg_path: str, top: int) -> str:
  """Where the entity range ends, for an interest id that falls inside it: the KG line holding
  the largest entity id."""
  with open(kg_path, encoding="utf-8-sig") as f:
    for n, line in enumerate(f, start=1):
      tokens = line.split()
      if len(tokens) == 3 and str(top) in (tokens[0], tokens[2]):
        return f"; the largest KG entity id, {top}, is on {kg_path}:{n}"
  return f"; the largest KG entity id is {top}"


def split_seed_of(config) -> int:
  """The validation split's seed: `config.split_seed`, fixed across training seeds so that every
  seed of a study selects on the same held-out items and LLM prompts can exclude exactly them."""
  seed = config.get("split_seed")
  return config.seed if seed is None or seed < 0 else seed


def load_from_config(config) -> Dataset:
  """Loads `config.dataset`, generating the synthetic one on first use."""
  data_dir = config.get("data_dir")
  if config.dataset == "synthetic":
    from cikg_jax.data import synthetic

    data_dir = synthetic.ensure(config.get("synthetic_dir") or None, **dict(config.synthetic))
  elif config.dataset == "synthetic_large":
    from cikg_jax.data import synthetic_large

    data_dir = synthetic_large.ensure(
      config.get("synthetic_dir") or None, **dict(config.synthetic_large)
    )
  ds = load_dataset(
    data_dir,
    config.dataset,
    selection=config.selection,
    valid_fraction=config.valid_fraction,
    seed=split_seed_of(config),
    interest_file=config.get("interest_file") or None,
  )
  control = config.get("interest_control") or ""
  if control:
    from cikg_jax.data import interest_controls

    edges = interest_controls.apply(ds.user_interest, ds.n_users, control, config.seed)
    ds = dataclasses.replace(ds, user_interest=edges)
    log.info(
      "interest control %r (seed %d): %s user-interest edges on %d nodes",
      control,
      config.seed,
      f"{len(edges):,}",
      len(np.unique(edges[:, 1])) if len(edges) else 0,
    )
  return ds

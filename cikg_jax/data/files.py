"""Readers for the KGAT-style text files of METHOD.md §1.

Every reader validates as it parses and raises `DataFormatError` naming the file, the line and the
problem: a recommender trained on silently mangled ids produces plausible-looking, wrong numbers.
"""

from __future__ import annotations

import os
import warnings
from typing import Dict, List, Optional, Tuple

import numpy as np


class DataFormatError(ValueError):
  """Malformed dataset file; the message names file, line and problem."""


def _fail(path: str, line_no: Optional[int], problem: str):
  where = f"{path}:{line_no}" if line_no is not None else path
  raise DataFormatError(f"{where}: {problem}")


def _lines(path: str):
  """Yields (line_no, tokens); blank lines are allowed only at the end of the file."""
  if not os.path.exists(path):
    _fail(path, None, "file not found")
  with open(path, "r", encoding="utf-8") as f:
    raw = f.read().split("\n")
  while raw and not raw[-1].strip():
    raw.pop()
  for i, text in enumerate(raw, start=1):
    tokens = text.split()
    if not tokens:
      _fail(path, i, "empty line inside the file")
    yield i, tokens


def _to_int(path: str, line_no: int, token: str, what: str) -> int:
  try:
    value = int(token)
  except ValueError:
    _fail(path, line_no, f"{what} {token!r} is not an integer")
  if value < 0:
    _fail(path, line_no, f"{what} {value} is negative")
  return value


class UserItems(dict):
  """uid -> item list, remembering each user's line number for later error messages."""

  def __init__(self):
    super().__init__()
    self.line_of: Dict[int, int] = {}


def read_user_items(path: str, n_items: Optional[int] = None,
                    allow_empty: bool = False) -> UserItems:
  """Reads `uid item item ...` lines, keeping the file's item order (the LLM prompt uses it)."""
  out = UserItems()
  for line_no, tokens in _lines(path):
    uid = _to_int(path, line_no, tokens[0], "user id")
    if uid in out:
      _fail(path, line_no, f"duplicate line for user {uid}")
    items = [_to_int(path, line_no, t, "item id") for t in tokens[1:]]
    if not items and not allow_empty:
      _fail(path, line_no, f"user {uid} has no items")
    if len(set(items)) != len(items):
      seen, dup = set(), None
      for it in items:
        if it in seen:
          dup = it
          break
        seen.add(it)
      _fail(path, line_no, f"item {dup} listed twice for user {uid}")
    if n_items is not None:
      for it in items:
        if it >= n_items:
          _fail(path, line_no, f"item id {it} out of range (the dataset has {n_items} items)")
    out[uid] = items
    out.line_of[uid] = line_no
  return out


def read_triples(path: str, n_entities: Optional[int] = None) -> np.ndarray:
  """Reads `head relation tail` lines into an int64 array of shape (n, 3)."""
  rows = []
  for line_no, tokens in _lines(path):
    if len(tokens) != 3:
      _fail(path, line_no, f"expected 3 integers 'head relation tail', got {len(tokens)} tokens")
    h, r, t = (_to_int(path, line_no, x, w) for x, w in zip(tokens, ("head", "relation", "tail")))
    if n_entities is not None and max(h, t) >= n_entities:
      _fail(path, line_no, f"entity id {max(h, t)} out of range (entity_list has {n_entities})")
    rows.append((h, r, t))
  if not rows:
    _fail(path, None, "no triples")
  arr = np.asarray(rows, dtype=np.int64)
  return _dedupe_rows(path, arr)


def read_pairs(path: str, n_users: int, min_second: int) -> np.ndarray:
  """Reads `uid interest_id` lines; interest ids must lie above the entity range."""
  rows = []
  for line_no, tokens in _lines(path):
    if len(tokens) != 2:
      _fail(path, line_no, f"expected 'uid interest_id', got {len(tokens)} tokens")
    u = _to_int(path, line_no, tokens[0], "user id")
    v = _to_int(path, line_no, tokens[1], "interest id")
    if u >= n_users:
      _fail(path, line_no, f"user id {u} out of range (train.txt has {n_users} users)")
    if v < min_second:
      _fail(path, line_no, f"interest id {v} collides with the entity range (ids < {min_second})")
    rows.append((u, v))
  if not rows:
    _fail(path, None, "no user-interest pairs")
  return _dedupe_rows(path, np.asarray(rows, dtype=np.int64))


def _dedupe_rows(path: str, arr: np.ndarray) -> np.ndarray:
  """Duplicate edges are harmless for an undirected graph but worth a word (the shipped
  book-crossing interest file has 38)."""
  uniq, first = np.unique(arr, axis=0, return_index=True)
  n_dup = len(arr) - len(uniq)
  if n_dup:
    warnings.warn(f"{path}: {n_dup} duplicate lines ignored", stacklevel=3)
  return arr[np.sort(first)]


def count_list_entries(path: str) -> Optional[int]:
  """Number of `name remap_id` entries of an *_list.txt file (header skipped), or None if absent."""
  if not os.path.exists(path):
    return None
  n = 0
  for line_no, _ in _lines(path):
    if line_no > 1:
      n += 1
  return n


def write_user_items(path: str, user_items: Dict[int, List[int]]) -> None:
  with open(path, "w") as f:
    for u in sorted(user_items):
      f.write(" ".join(str(x) for x in [u] + list(user_items[u])) + "\n")


def write_rows(path: str, rows: np.ndarray, header: Optional[str] = None) -> None:
  with open(path, "w") as f:
    if header:
      f.write(header + "\n")
    for r in np.asarray(rows):
      f.write(" ".join(str(int(x)) for x in r) + "\n")


def check_disjoint(train: Dict[int, List[int]], test: Dict[int, List[int]],
                   train_path: str, test_path: str) -> Tuple[int, int]:
  """A test item that is also a training item leaks the answer; a test user without training
  items cannot be scored. Both are errors."""
  line_of = getattr(test, "line_of", {})
  for u in sorted(test):
    if u not in train:
      _fail(test_path, line_of.get(u), f"user {u} has test items but no line in {train_path}")
    both = set(train[u]) & set(test[u])
    if both:
      _fail(test_path, line_of.get(u),
            f"user {u}: item {min(both)} is both a training item and a test item")
  return len(train), len(test)

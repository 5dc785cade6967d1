"""Readers for the KGAT-style text files of docs/method.md §1.

Every reader validates as it parses and raises `DataFormatError` naming the file, the line and the
problem: a recommender trained on silently mangled ids produces plausible-looking, wrong numbers.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Callable, Dict, List, Optional, Sequence, Tuple
import warnings

import numpy as np


class DataFormatError(ValueError):
  """Malformed dataset file; the message names file, line and problem."""


def _fail(path: str, line_no: Optional[int], problem: str):
  where = f"{path}:{line_no}" if line_no is not None else path
  raise DataFormatError(f"{where}: {problem}")


ENCODING = "UTF-8"
_FIELD_SEP = re.compile(r"[ \t]+")
_DIGITS = re.compile(r"[0-9]+")


def split_fields(text: str, maxsplit: int = 0) -> List[str]:
  """The one tokenizer rule of every data file: fields are separated by ASCII spaces and tabs only,
  so a name or URI may hold any other character (U+00A0, non-ASCII letters, mojibake), which
  `str.split()` would cut apart."""
  text = text.strip(" \t")
  return _FIELD_SEP.split(text, maxsplit=maxsplit) if text else []


def read_text(path: str) -> str:
  """The file's text, decoded as UTF-8 (a byte-order mark allowed); bytes that are not UTF-8
  (a Latin-1 export, a binary file) are refused naming the line and byte offset."""
  with open(path, "rb") as f:
    data = f.read()
  try:
    return data.decode("utf-8-sig")
  except UnicodeDecodeError as e:
    line = data.count(b"\n", 0, e.start) + 1
    _fail(
      path,
      line,
      f"byte 0x{data[e.start]:02x} at byte offset {e.start} is not {ENCODING}; data files must "
      f"be {ENCODING} text (re-encode a Latin-1 file with `iconv -f latin1 -t utf-8`)",
    )


def present(path: str) -> bool:
  """True if `path` exists, False if nothing is there; a symbolic link that leads nowhere (a loop,
  a missing target) is an error, not an absent optional file."""
  if os.path.exists(path):
    return True
  if os.path.lexists(path):
    _fail(path, None, "a symbolic link that leads nowhere (a loop or a missing target)")
  return False


def _text_lines(path: str):
  """Yields (line_no, text without the line end); blank lines are allowed only at the end of the
  file. A UTF-8 byte-order mark (Windows editors write one) and CRLF line ends are accepted. A last
  line without a line end is read with a warning: a file cut short loses its last ids silently."""
  if not present(path):
    _fail(path, None, "file not found")
  raw = read_text(path).split("\n")
  if len(raw) > 1 and split_fields(raw[-1].rstrip("\r")):
    warnings.warn(
      f"{path}:{len(raw)}: the last line has no line end; if the file was cut short (an "
      "interrupted copy or download), the ids of that line are incomplete",
      stacklevel=3,
    )
  while raw and not split_fields(raw[-1].rstrip("\r")):
    raw.pop()
  for i, text in enumerate(raw, start=1):
    text = text.rstrip("\r")
    if not split_fields(text):
      _fail(path, i, "empty line inside the file")
    yield i, text


def _lines(path: str):
  """Yields (line_no, fields), as `_text_lines`."""
  for i, text in _text_lines(path):
    yield i, split_fields(text)


def parse_id(token: str) -> Optional[int]:
  """A non-negative id written in ASCII digits, else None: `int()` would also accept `1_0`,
  `+12` and other scripts' digits (`١٢`), which no id column means."""
  return int(token) if _DIGITS.fullmatch(token) else None


def _to_int(path: str, line_no: int, token: str, what: str) -> int:
  value = parse_id(token)
  if value is None:
    if token.startswith("-") and parse_id(token[1:]) is not None:
      _fail(path, line_no, f"{what} {token} is negative")
    _fail(path, line_no, f"non-integer {what} {token!r} (ids are ASCII digits 0-9)")
  return value


class UserItems(dict):
  """uid -> item list, remembering each user's line number for later error messages."""

  def __init__(self):
    super().__init__()
    self.line_of: Dict[int, int] = {}


def read_user_items(
  path: str, n_items: Optional[int] = None, allow_empty: bool = False
) -> UserItems:
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
          _fail(
            path,
            line_no,
            f"item id {it} out of range (the dataset has {n_items} items, "
            "remap ids 0..n-1 of item_list.txt; raw item ids: "
            "`python -m cikg_jax.data.convert`)",
          )
    out[uid] = items
    out.line_of[uid] = line_no
  return out


def read_triples(
  path: str, n_entities: Optional[int] = None, n_items: Optional[int] = None
) -> np.ndarray:
  """Reads `head relation tail` lines into an int64 array of shape (n, 3). Ids size the relation
  and entity tables: they are checked against the file's own ids before anything is allocated
  (entities above the `n_items` items, and only without an entity_list, `n_entities`, whose length
  bounds them otherwise)."""
  rows, line_nos = [], []
  for line_no, tokens in _lines(path):
    if len(tokens) != 3:
      _fail(path, line_no, f"expected 3 integers 'head relation tail', got {len(tokens)} tokens")
    h, r, t = (_to_int(path, line_no, x, w) for x, w in zip(tokens, ("head", "relation", "tail")))
    if n_entities is not None and max(h, t) >= n_entities:
      _fail(path, line_no, f"entity id {max(h, t)} out of range (entity_list has {n_entities})")
    rows.append((h, r, t))
    line_nos.append(line_no)
  if not rows:
    _fail(path, None, "no triples")
  arr = np.asarray(rows, dtype=np.int64)
  check_dense_ids(path, arr[:, 1], line_nos, 0, "relation")
  if n_entities is None and n_items is not None:
    ids = np.concatenate([arr[:, 0], arr[:, 2]])
    above = ids >= n_items
    if above.any():
      check_dense_ids(path, ids[above], list(np.asarray(line_nos * 2)[above]), n_items, "entity")
  return _dedupe_rows(path, arr)


def read_pairs(
  path: str,
  n_users: Optional[int] = None,
  min_second: Optional[int] = None,
  why_min: Callable[[], str] = lambda: "",
) -> np.ndarray:
  """Reads `uid interest_id` lines; interest ids must lie above the entity range. Without
  `n_users` / `min_second` (a file read apart from its dataset) only the format is checked; the
  trainer checks the ranges when it loads the file with its dataset."""
  rows, line_nos = [], []
  for line_no, tokens in _lines(path):
    if len(tokens) != 2:
      _fail(path, line_no, f"expected 'uid interest_id', got {len(tokens)} tokens")
    u = _to_int(path, line_no, tokens[0], "user id")
    v = _to_int(path, line_no, tokens[1], "interest id")
    if n_users is not None and u >= n_users:
      _fail(path, line_no, f"user id {u} out of range (train.txt has {n_users} users)")
    if min_second is not None and v < min_second:
      _fail(
        path,
        line_no,
        f"interest id {v} collides with the entity range (ids < {min_second}{why_min()})",
      )
    rows.append((u, v))
    line_nos.append(line_no)
  if not rows:
    _fail(path, None, "no user-interest pairs")
  arr = np.asarray(rows, dtype=np.int64)
  if min_second is not None:
    check_dense_ids(path, arr[:, 1], line_nos, min_second, "interest")
  return _dedupe_rows(path, arr)


# Interest ids index an embedding table from the first id above the entities to the largest id. The
# shipped files use 21% (ml1m) to 99% of their ranges; a stray id far above the rest would size the
# table (and Adam's two moments) to millions of empty rows. Small waste is tolerated.
SPARSE_MAX_UNUSED_ROWS = 4096
SPARSE_MIN_USED_FRACTION = 1 / 8


_FIRST_ID = {
  "interest": " (the first id above the entities)",
  "entity": " (the first id above the items)",
}


def check_dense_ids(
  path: str, ids: np.ndarray, line_nos: Sequence[int], first: int, what: str
) -> None:
  """Refuses an id range `first..max(ids)` that is mostly empty (more than
  SPARSE_MAX_UNUSED_ROWS unused rows and under SPARSE_MIN_USED_FRACTION used), naming the line of
  the largest id. Refusing rather than compacting: a far-off id is almost always a typo or a file
  from another numbering, and silently renumbering would hide it (and move the shipped ranges)."""
  used = np.unique(ids)
  n_rows = int(used[-1]) + 1 - first
  unused = n_rows - len(used)
  if unused <= SPARSE_MAX_UNUSED_ROWS or len(used) >= SPARSE_MIN_USED_FRACTION * n_rows:
    return
  top = int(used[-1])
  line = line_nos[int(np.flatnonzero(ids == top)[0])]
  gaps = np.diff(np.concatenate([[first - 1], used]))
  k = int(np.argmax(gaps))  # the largest jump: ids from used[k] up are the suspects
  below = f"; the other ids lie in {int(used[0])}..{int(used[k - 1])}" if k > 0 else ""
  _fail(
    path,
    line,
    f"{what} id {top} would size the {what} table to {n_rows:,} rows of which only "
    f"{len(used):,} are used{below}. {what.capitalize()} ids must be numbered densely from "
    f"{first}{_FIRST_ID.get(what, '')}: fix or drop "
    "this line, or renumber the ids (`python -m cikg_jax.data.convert` does)",
  )


def _dedupe_rows(path: str, arr: np.ndarray) -> np.ndarray:
  """Duplicate edges are harmless for an undirected graph but worth a word (the shipped
  book-crossing interest file has 38)."""
  uniq, first = np.unique(arr, axis=0, return_index=True)
  n_dup = len(arr) - len(uniq)
  if n_dup:
    warnings.warn(f"{path}: {n_dup} duplicate lines ignored", stacklevel=3)
  return arr[np.sort(first)]


NAMELESS = frozenset({"", "none", "null", "nan"})


@dataclasses.dataclass
class IdList:
  """An *_list.txt file (`org_id remap_id [name]`, header line), indexed by remap id."""

  path: str
  org_ids: List[str]
  names: List[Optional[str]]  # None where the line has no name column
  line_of: List[int]
  remap_ids: List[int]  # ascending; 0..n-1 unless read with dense=False

  def __len__(self) -> int:
    return len(self.org_ids)

  def keys(self, i: int) -> set:
    """The identifiers of entry i (org id, name), ignoring "None"-style placeholders: KGAT-style
    lists name the same object by org id in one file and by URI / freebase id in the other."""
    return {
      k for k in (self.org_ids[i], self.names[i]) if k is not None and k.lower() not in NAMELESS
    }


def read_id_list(path: str, dense: bool = True) -> IdList:
  """Reads item_list.txt / entity_list.txt / user_list.txt. With `dense`, remap ids must be exactly
  0..n-1, each once: a duplicated or out-of-range line would otherwise add a phantom item. Names
  may contain spaces or be absent."""
  entries: Dict[int, Tuple[str, Optional[str], int]] = {}
  for line_no, text in _text_lines(path):
    tokens = split_fields(text, maxsplit=2)
    if line_no == 1:
      if tokens[:2] != ["org_id", "remap_id"] or len(split_fields(text)) > 3:
        _fail(path, 1, f"expected the header 'org_id remap_id [name]', got {text.strip()[:80]!r}")
      continue
    if len(tokens) < 2:
      _fail(path, line_no, f"expected 'org_id remap_id [name]', got {text.strip()[:80]!r}")
    if parse_id(tokens[1].lstrip("-")) is None:
      _fail(path, line_no, f"remap_id {tokens[1]!r} is not an integer")
    remap = _to_int(path, line_no, tokens[1], "remap_id")
    if remap in entries:
      _fail(path, line_no, f"remap_id {remap} already on line {entries[remap][2]}")
    name = tokens[2].strip(" \t") if len(tokens) == 3 else None
    entries[remap] = (tokens[0], name, line_no)
  n = len(entries)
  if dense:
    for remap in sorted(entries):
      if remap >= n:
        missing = min(set(range(n)) - set(entries))
        _fail(
          path,
          entries[remap][2],
          f"remap_id {remap} out of range: the file has {n} entries, "
          f"so remap ids must be 0..{n - 1} each once ({missing} is missing)",
        )
  order = sorted(entries)
  return IdList(
    path,
    [entries[k][0] for k in order],
    [entries[k][1] for k in order],
    [entries[k][2] for k in order],
    order,
  )


def read_id_list_if_present(path: str) -> Optional[IdList]:
  return read_id_list(path) if os.path.exists(path) else None


def check_items_are_entities(items: IdList, entities: IdList) -> None:
  """Item i must be KG entity i. Each shipped entry shares its org id or its name/URI with the
  entity of the same remap id (dbbook2014/ml1m: item name = entity org id, or both org ids where the
  item has no URI; book-crossing: same org id or same title), as in KGAT's own lists (item
  freebase_id = entity org_id). A row sharing neither means the two numberings disagree."""
  if len(items) > len(entities):
    _fail(
      items.path,
      None,
      f"{len(items)} items but {entities.path} lists only {len(entities)} "
      "entities; items must be the first entities (item i = entity i)",
    )
  bad = [i for i in range(len(items)) if not items.keys(i) & entities.keys(i)]
  if bad:
    i = bad[0]
    ids = lambda lst: " / ".join(sorted(lst.keys(i))) or "no id"
    _fail(
      items.path,
      items.line_of[i],
      f"item {i} ({ids(items)}) is not entity {i} of {entities.path}:{entities.line_of[i]} "
      f"({ids(entities)}); {len(bad)} of {len(items)} items disagree. Items must be numbered "
      "like their KG entities (item i = entity i): convert the dataset with "
      "`python -m cikg_jax.data.convert`, or remove entity_list.txt if the two lists use "
      "unrelated ids",
    )


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


def check_disjoint(
  train: Dict[int, List[int]], test: Dict[int, List[int]], train_path: str, test_path: str
) -> Tuple[int, int]:
  """A test item that is also a training item leaks the answer; a test user without training
  items cannot be scored. Both are errors."""
  line_of = getattr(test, "line_of", {})
  for u in sorted(test):
    if u not in train:
      _fail(test_path, line_of.get(u), f"user {u} has test items but no line in {train_path}")
    both = set(train[u]) & set(test[u])
    if both:
      _fail(
        test_path,
        line_of.get(u),
        f"user {u}: item {min(both)} is both a training item and a test item",
      )
  return len(train), len(test)

"""Read the training histories and item titles that the prompts are built from.

The files are parsed by `cikg_jax.data.files`, the trainer's own readers, so the prompts and the
trainer accept and reject exactly the same files. The caller passes the training history as a
mapping uid -> ordered item list, so a held-out validation split (made by the core library) is
simply left out.
"""

from __future__ import annotations

from pathlib import Path
import re
from typing import Dict, List, Mapping, Optional, Sequence
from urllib.parse import unquote

from cikg_jax.data import files

DOMAINS = {"dbbook2014": "books", "book-crossing": "books", "ml1m": "movies"}
_NAMELESS = files.NAMELESS

# The data readers' error: `path:line: problem`.
DataFileError = files.DataFormatError


def read_user_items(path: str | Path, n_items: Optional[int] = None) -> Dict[int, List[int]]:
  """Parse a held-out file (`uid item item ...` lines, train.txt format), keeping the file's item
  order; read as the trainer reads test.txt: a user line without items is allowed, item ids must be
  below `n_items` when given."""
  return dict(files.read_user_items(str(path), n_items=n_items, allow_empty=True))


def uri_to_title(name: str, strip_disambiguation: bool = False) -> Optional[str]:
  """DBpedia URI -> title (last path segment, %-decoded, underscores as spaces); None if nameless.

  Plain names (book-crossing) pass through unchanged. `strip_disambiguation` drops a trailing
  "(novel)"-style suffix; the release kept it, so it is off by default.
  """
  name = name.strip()
  if name.lower() in _NAMELESS:
    return None
  if name.startswith(("http://", "https://")):
    name = unquote(name.rstrip("/").rsplit("/", 1)[-1]).replace("_", " ")
  if strip_disambiguation:
    name = re.sub(r"\s*\([^()]*\)\s*$", "", name)
  name = " ".join(name.split())
  return name or None


def read_item_titles(path: str | Path, strip_disambiguation: bool = False) -> Dict[int, str]:
  """Parse item_list.txt (`org_id remap_id name-or-URI`, header line) into remap_id -> title.

  Items without a name (missing column or "None") are absent from the result.
  """
  items = files.read_id_list(str(path))
  titles = {
    i: uri_to_title(name, strip_disambiguation)
    for i, name in enumerate(items.names)
    if name is not None
  }
  return {i: t for i, t in titles.items() if t is not None}


def exclude_items(
  history: Mapping[int, Sequence[int]], held_out: Mapping[int, Sequence[int]]
) -> Dict[int, List[int]]:
  """Remove each user's held-out (validation/test) items from a history, keeping order."""
  out = {}
  for uid, items in history.items():
    drop = set(held_out.get(uid, ()))
    out[uid] = [i for i in items if i not in drop]
  return out


def last_titles(items: Sequence[int], titles: Mapping[int, str], n: int = 30) -> List[str]:
  """Titles of the last `n` items in order (the release's window); nameless items dropped after."""
  return [titles[i] for i in list(items)[-n:] if i in titles] if n > 0 else []


def domain_of(dataset: str) -> str:
  """'books' or 'movies' for the prompt; unknown datasets must say which."""
  try:
    return DOMAINS[dataset]
  except KeyError:
    raise ValueError(
      f"unknown dataset {dataset!r}: set prompt.domain explicitly (books|movies)"
    ) from None

"""Read the training histories and item titles that the prompts are built from.

Kept independent of `cikg_jax.data` on purpose: the caller passes the training history as a mapping
uid -> ordered item list, so a held-out validation split (made by the core library) is simply left out.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence
from urllib.parse import unquote

DOMAINS = {"dbbook2014": "books", "book-crossing": "books", "ml1m": "movies"}
_NAMELESS = {"", "none", "null", "nan"}


class DataFileError(ValueError):
    """A data file is malformed; the message names the file and line."""


def _fail(path, line_no, problem) -> None:
    raise DataFileError(f"{path}:{line_no}: {problem}")


def read_user_items(path: str | Path) -> Dict[int, List[int]]:
    """Parse `uid item item ...` lines (train.txt / test.txt), keeping the file's item order."""
    out: Dict[int, List[int]] = {}
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            tokens = line.split()
            if not tokens:
                continue
            try:
                ids = [int(t) for t in tokens]
            except ValueError:
                _fail(path, line_no, f"non-integer token in {line.strip()[:80]!r}")
            if min(ids) < 0:
                _fail(path, line_no, "negative id")
            if ids[0] in out:
                _fail(path, line_no, f"user {ids[0]} appears twice")
            out[ids[0]] = ids[1:]
    return out


def uri_to_title(name: str, strip_disambiguation: bool = False) -> Optional[str]:
    """DBpedia URI -> readable title (last path segment, %-decoded, underscores as spaces); None if nameless.

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
    titles: Dict[int, str] = {}
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if line_no == 1 and "remap_id" in line:
                continue
            if not line.strip():
                continue
            parts = line.rstrip("\n").split(maxsplit=2)
            if len(parts) < 2:
                _fail(path, line_no, f"expected `org_id remap_id name`, got {line.strip()[:80]!r}")
            try:
                remap = int(parts[1])
            except ValueError:
                _fail(path, line_no, f"remap_id {parts[1]!r} is not an integer")
            if remap in titles:
                _fail(path, line_no, f"remap_id {remap} appears twice")
            title = uri_to_title(parts[2], strip_disambiguation) if len(parts) == 3 else None
            if title is not None:
                titles[remap] = title
    return titles


def exclude_items(history: Mapping[int, Sequence[int]],
                  held_out: Mapping[int, Sequence[int]]) -> Dict[int, List[int]]:
    """Remove each user's held-out (validation/test) items from a history, keeping order."""
    out = {}
    for uid, items in history.items():
        drop = set(held_out.get(uid, ()))
        out[uid] = [i for i in items if i not in drop]
    return out


def last_titles(items: Sequence[int], titles: Mapping[int, str], n: int = 30) -> List[str]:
    """Titles of the last `n` items in order (the release's window), nameless items dropped afterwards."""
    return [titles[i] for i in list(items)[-n:] if i in titles] if n > 0 else []


def domain_of(dataset: str) -> str:
    """'books' or 'movies' for the prompt; unknown datasets must say which."""
    try:
        return DOMAINS[dataset]
    except KeyError:
        raise ValueError(f"unknown dataset {dataset!r}: set prompt.domain explicitly (books|movies)") from None

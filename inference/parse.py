"""Model text -> interest phrases, robust to what real models write.

Handles: a JSON array (structured output), numbered or bulleted lists, "The user's interests are:"
preambles, echoed instructions, trailing explanations, more than `max_items` items, and answers cut
off by `finish_reason == "length"` (the last, possibly partial, item is dropped). Each result
carries flags naming the problems seen, so quality can be counted per model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
import json
import re
from typing import List, Optional, Set

_LIST_MARKER = re.compile(
  r"^\s*(?:\d{1,2}\s*[.):]|[-*\u2022\u2013\u00b7]|\(\d{1,2}\)|[a-e][.)])\s+"
)
_ECHO = re.compile(
  r"anonymous user|no further explanation|comma to split|extensive knowledge|"
  r"list no more than|infer the user",
  re.I,
)
_KEYWORDS = r"\b(?:interests?|topics?|genres?|preferences?|prefers?|favou?rites?|likes?|answer)\b"
_PREAMBLE = re.compile(
  rf"^(?:[^:]{{0,120}}{_KEYWORDS}[^:]{{0,40}}:|[^:,]{{0,80}}{_KEYWORDS}[^:,]{{0,40}}"
  rf"\b(?:are|include)\b)\s*",
  re.I,
)
_BOLD = re.compile(r"\*\*|__|`")
_EXPLAIN = re.compile(r"\s+(?:-|\u2013|\u2014|:)\s+.*$|:\s.*$")


@dataclass
class Parsed:
  phrases: List[str]
  flags: Set[str] = field(default_factory=set)


def _clean_item(s: str) -> str:
  s = _LIST_MARKER.sub("", _BOLD.sub("", s)).strip()  # inline "1. x, 2. y" lists too
  s = re.sub(r"^(?:and|or)\s+", "", s, flags=re.I)
  s = s.strip(" \t\"'“”‘’[]{}")
  s = re.sub(r"[.;!]+$", "", s).strip(" \"'“”‘’")
  if s.startswith("(") and s.endswith(")"):
    s = s[1:-1].strip()
  elif s.count("(") != s.count(")"):
    s = s.strip("()").strip()
  return s


def _from_json(text: str) -> Optional[List[str]]:
  start, end = text.find("["), text.rfind("]")
  if start < 0 or end <= start:
    return None
  try:
    val = json.loads(text[start : end + 1])
  except json.JSONDecodeError:
    return None
  if isinstance(val, list) and val and all(isinstance(v, str) for v in val):
    return val
  return None


def _list_items(lines: List[str]) -> List[str]:
  """Items of a numbered/bulleted list, each reduced to its head phrase ("X: because..." -> "X")."""
  return [
    _EXPLAIN.sub("", _LIST_MARKER.sub("", _BOLD.sub("", ln)))
    for ln in lines
    if _LIST_MARKER.match(ln)
  ]


def _prose_items(lines: List[str], flags: Set[str]) -> List[str]:
  """Comma-separated answer: the first line with a list, preamble and trailing sentence removed."""
  if not lines:
    return []
  line = next((ln for ln in lines if "," in ln), lines[0])
  if len(lines) > 1:
    flags.add("trailing_text")
  m = _PREAMBLE.match(line)
  if m and m.end() < len(line):
    flags.add("preamble")
    line = line[m.end() :]
  items = [_LIST_MARKER.sub("", p.strip()) for p in re.split(r"[,;]", line)]
  last = items[-1]
  cut = re.search(r"[.!?]\s+[A-Z]", last)
  if cut:  # "..., romance. These reflect the user's taste" -> keep "romance"
    items[-1] = last[: cut.start()]
    flags.add("trailing_text")
  return items


def parse_interests(
  text: Optional[str], finish_reason: Optional[str] = "stop", max_items: int = 5
) -> Parsed:
  """Parse one answer into at most `max_items` unique phrases (order kept)."""
  flags: Set[str] = set()
  text = (text or "").strip()
  if not text:
    return Parsed([], {"empty"})
  truncated = finish_reason == "length"
  if truncated:
    flags.add("truncated")
  items = _from_json(text)
  if items is not None:
    flags.add("json")
  else:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    kept = [ln for ln in lines if not _ECHO.search(ln)]
    if len(kept) < len(lines):
      flags.add("echo")
    listed = [ln for ln in kept if _LIST_MARKER.match(ln)]
    if len(listed) >= 2 or (listed and len(kept) == 1):
      flags.add("list")
      if len(listed) < len(kept):
        flags.add("preamble" if not _LIST_MARKER.match(kept[0]) else "trailing_text")
      items = _list_items(kept)
    elif len(kept) >= 2 and not any("," in ln for ln in kept) and all(len(ln) <= 80 for ln in kept):
      flags.add("lines")  # one item per line, no markers
      items = kept
    else:
      items = _prose_items(kept, flags)
    if truncated and items:
      items = items[:-1]  # the last item may be cut mid-word
  out, seen = [], set()
  for raw in items:
    item = _clean_item(raw)
    key = item.lower()
    if item and key not in seen:
      seen.add(key)
      out.append(item)
  if len(out) > max_items:
    flags.add("too_many")
    out = out[:max_items]
  if not out:
    flags.add("empty")
  return Parsed(out, flags)

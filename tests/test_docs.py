"""The user's guide and its pages: every relative link points at a file that exists, and the pages
speak of what the code does and what was measured, not of how the project is developed."""

import glob
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = sorted(
  [os.path.join(ROOT, "README.md"), os.path.join(ROOT, "inference", "README.md")]
  + glob.glob(os.path.join(ROOT, "docs", "*.md"))
)
# [text](target) and ![alt](target); a target with a scheme (http:, mailto:) or only an anchor is
# not a file.
_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def relative_links(text):
  return [t for t in _LINK.findall(text) if not re.match(r"^[a-z][a-z0-9+.-]*:|^#", t)]


def test_link_pattern_finds_relative_links_only():
  text = "[a](docs/x.md) ![p](../y.png) [b](https://e.org) [c](#anchor) [d](z.md#part)"
  assert relative_links(text) == ["docs/x.md", "../y.png", "z.md#part"]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: os.path.relpath(p, ROOT))
def test_every_relative_link_points_at_an_existing_file(page):
  text = open(page, encoding="utf-8").read()
  broken = [
    t
    for t in relative_links(text)
    if not os.path.exists(os.path.join(os.path.dirname(page), t.split("#", 1)[0]))
  ]
  assert not broken, f"{os.path.relpath(page, ROOT)}: links to missing files: {broken}"


_DEVELOPMENT_WORDS = re.compile(
  r"\bsessions?\b|device tool|\bissue #?\d+|\bhelpers?\b|previous round", re.I
)


def development_talk(path):
  """Lines of `path` that speak of how the project is being developed, not of the product."""
  return [
    f"{i}: {line.strip()[:160]}"
    for i, line in enumerate(open(path, encoding="utf-8"), 1)
    if _DEVELOPMENT_WORDS.search(line) and "session_" not in line
  ]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: os.path.relpath(p, ROOT))
def test_pages_do_not_speak_of_how_the_project_is_developed(page):
  hits = development_talk(page)
  assert not hits, f"{os.path.relpath(page, ROOT)}:\n" + "\n".join(hits)


def test_result_records_do_not_speak_of_how_the_project_is_developed():
  """Records name the machine and what was measured, as a paper would (their machine strings
  are shown in the tables)."""
  records = [
    p
    for ext in ("json", "md", "log", "txt")
    for p in glob.glob(
      os.path.join(ROOT, "experiments", "results", "**", f"*.{ext}"), recursive=True
    )
  ]
  assert len(records) > 100
  hits = {os.path.relpath(p, ROOT): h for p in records if (h := development_talk(p))}
  assert not hits, "\n".join(f"{p}: {h[0]}" for p, h in sorted(hits.items()))

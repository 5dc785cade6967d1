"""Parsing of real-looking model answers (cases taken from SmolLM2-135M and typical 7B output)."""

import pytest

from inference.parse import parse_interests

CASES = [
  (
    "Fantasy, science fiction, historical romance",
    "stop",
    ["Fantasy", "science fiction", "historical romance"],
    set(),
  ),
  (
    "The user's interests are: fantasy, time travel, Scottish history.",
    "stop",
    ["fantasy", "time travel", "Scottish history"],
    {"preamble"},
  ),
  (
    "Based on the list, the user's top interests are: fantasy, magic, Scotland",
    "stop",
    ["fantasy", "magic", "Scotland"],
    {"preamble"},
  ),
  (
    "Based on the list, the user's top interests are:\n1. **Historical fiction**: epic sagas\n"
    "2. Fantasy - dragons\n3) Science fiction\n\nThese reflect a taste for epic stories.",
    "stop",
    ["Historical fiction", "Fantasy", "Science fiction"],
    {"list", "preamble"},
  ),
  (
    "- Mystery\n- Thriller\n* Crime\n\u2022 Noir",
    "stop",
    ["Mystery", "Thriller", "Crime", "Noir"],
    {"list"},
  ),
  ('["fantasy", "magic"]', "stop", ["fantasy", "magic"], {"json"}),
  ("a1, b2, c3, d4, e5, f6, g7", "stop", ["a1", "b2", "c3", "d4", "e5"], {"too_many"}),
  ("fantasy, science fiction, histo", "length", ["fantasy", "science fiction"], {"truncated"}),
  (
    "List no more than five the top interests of this anonymous user.\nFantasy, Magic",
    "stop",
    ["Fantasy", "Magic"],
    {"echo"},
  ),
  (
    "Fantasy, romance. These reflect the user's taste",
    "stop",
    ["Fantasy", "romance"],
    {"trailing_text"},
  ),
  (
    "The list of interests is: 1. One Hundred Years of Solitude, 2. The Name of the Rose, 3. Journey",
    "stop",
    ["One Hundred Years of Solitude", "The Name of the Rose", "Journey"],
    {"preamble"},
  ),
  (
    "The Power of One (novel)\nThe Corrections\nTimeliner\nThe Pil",
    "length",
    ["The Power of One (novel)", "The Corrections", "Timeliner"],
    {"lines", "truncated"},
  ),
  (
    "1. The No. 1 Ladies' Detective Agency (novel)\n2. Undead",
    "stop",
    ["The No. 1 Ladies' Detective Agency (novel)", "Undead"],
    {"list"},
  ),
  (
    "The Color Purple, Lord of the Flies, The Color Purple, the color purple",
    "stop",
    ["The Color Purple", "Lord of the Flies"],
    set(),
  ),
  ("Star Wars: A New Hope, Alien", "stop", ["Star Wars: A New Hope", "Alien"], set()),
  (
    "The Door into Summer, House of Leaves, and The Nightingale",
    "stop",
    ["The Door into Summer", "House of Leaves", "The Nightingale"],
    set(),
  ),
]


@pytest.mark.parametrize("text,finish,phrases,flags", CASES)
def test_parse_cases(text, finish, phrases, flags):
  p = parse_interests(text, finish)
  assert p.phrases == phrases
  assert flags <= p.flags


def test_empty_and_none():
  assert parse_interests("").phrases == [] and "empty" in parse_interests(None).flags
  assert parse_interests("only one item cut mid-w", "length").phrases == []


def test_max_items_configurable():
  assert len(parse_interests("a1, b2, c3", max_items=2).phrases) == 2

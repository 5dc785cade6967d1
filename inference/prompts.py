"""Versioned prompt templates: history titles -> chat messages.

Every template is frozen once published; change the wording by adding a new version, so that a
results file's manifest (which records the template name and its hash) always says what the model
was asked.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
import hashlib
import json
from typing import Dict, List, Sequence


@dataclass(frozen=True)
class PromptTemplate:
  name: str
  system: str  # may contain {domain}
  user: str  # contains {titles}
  structured: bool = False  # True: the answer is a JSON list, pair with structured output

  def messages(self, titles: Sequence[str], domain: str) -> List[Dict[str, str]]:
    """The chat messages for one user."""
    if domain not in ("books", "movies"):
      raise ValueError(f"domain must be 'books' or 'movies', got {domain!r}")
    return [
      {"role": "system", "content": self.system.format(domain=domain)},
      {"role": "user", "content": self.user.format(titles=format_titles(titles))},
    ]

  def digest(self) -> str:
    """Stable hash of the wording, recorded in manifests."""
    blob = json.dumps(asdict(self), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def format_titles(titles: Sequence[str]) -> str:
  """`[title1, title2, ...]` as in the release (a title may contain commas; sent as is)."""
  return "[" + ", ".join(titles) + "]"


_RELEASE_SYSTEM = (
  "You will be provided with a list of {domain} an anonymous user has liked, and your task is to "
  "infer the user's interests based on the list and your extensive knowledge. List no more than "
  "five the top interests of this anonymous user. No further explanation is needed. Please use a "
  "comma to split the interests."
)

_JSON_SYSTEM = (
  "You will be provided with a list of {domain} an anonymous user has liked, and your task is to "
  "infer the user's interests based on the list and your extensive knowledge. Answer with a JSON "
  "array of at most five short interest phrases (genres, themes, topics), most important first, "
  "and nothing else."
)

TEMPLATES: Dict[str, PromptTemplate] = {
  t.name: t
  for t in (
    # The release's prompt (gpt-3.5-turbo-0125), word for word.
    PromptTemplate("release-v1", _RELEASE_SYSTEM, "{titles}"),
    # JSON answer, for structured output (vLLM `structured_outputs` / `response_format`).
    PromptTemplate("json-v1", _JSON_SYSTEM, "{titles}", structured=True),
  )
}

INTERESTS_JSON_SCHEMA = {
  "type": "array",
  "items": {"type": "string", "minLength": 2, "maxLength": 50},
  "minItems": 1,
  "maxItems": 5,
}


def get_template(name: str) -> PromptTemplate:
  """Look a template up by name, listing the known ones on a miss."""
  try:
    return TEMPLATES[name]
  except KeyError:
    raise ValueError(f"unknown prompt template {name!r}; known: {sorted(TEMPLATES)}") from None

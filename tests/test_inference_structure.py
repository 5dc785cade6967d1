"""Structuring: cleaning, clustering with the release's filters, ids after the entity range, outputs."""

import json
from pathlib import Path

import numpy as np
import pytest

from inference import structure
from inference.structure import (
  clean_phrase,
  cluster_interests,
  lemmatise,
  max_entity_id,
  user_phrases,
)

FIX = Path(__file__).parent / "inference_fixtures"


def test_lemmatise_and_clean():
  assert [
    lemmatise(w) for w in ("stories", "novels", "classes", "series", "physics", "gas", "witches")
  ] == ["story", "novel", "class", "series", "physics", "gas", "witch"]
  assert clean_phrase("The Lord of the Rings (novels)!") == "lord ring novel"
  assert clean_phrase("Sci-Fi & 1980s Fantasy") == "sci fi fantasy"
  assert clean_phrase("the") == "" and clean_phrase("x") == "" and clean_phrase("word " * 20) == ""


def test_user_phrases_parses_and_dedupes():
  res = {
    "user-3": {
      "text": "The user's interests are: Fantasy novels, fantasy novel, Magic",
      "finish_reason": "stop",
    },
    "user-4": {"text": "the, of", "finish_reason": "stop"},
  }
  by_user, flags = user_phrases(res)
  assert by_user == {3: ["fantasy novel", "magic"]} and flags["preamble"] == 1


def _synthetic():
  """40 users: everyone says 'book' (a generic cluster), groups share topics, one user has a unique phrase."""
  topics = ["space opera", "medieval history", "detective mystery", "romantic comedy"]
  by_user = {u: ["book", topics[u % 4]] for u in range(40)}
  by_user[0] = by_user[0] + ["underwater basket weaving"]
  return by_user


def test_cluster_filters_and_ids():
  s = cluster_interests(_synthetic(), kappa=6, n_users=100, max_entity_id=99, seed=0)
  ids = {i for _, i in s.pairs}
  assert all(100 <= i < 106 for i in ids)
  phrases = {p for c in s.clusters.values() for p, _ in c["phrases"]}
  assert "book" not in phrases  # used by 40 >= 100/5 users: dropped
  assert "underwater basket weaving" not in phrases  # a single-row cluster: dropped
  assert {"space opera", "medieval history", "detective mystery", "romantic comedy"} <= phrases
  assert s.stats["clusters_dropped_generic"] >= 1 and s.stats["clusters_dropped_single_row"] >= 1
  per_user = {}
  for u, i in s.pairs:
    per_user.setdefault(u, set()).add(i)
  assert all(len(v) == 1 for v in per_user.values()) and len(per_user) == 40
  same = [i for u, i in s.pairs if u % 4 == 1]
  assert len(set(same)) == 1  # users with the same topic share the node


def test_seeded_is_deterministic():
  a = cluster_interests(_synthetic(), kappa=6, n_users=40, max_entity_id=9, seed=3)
  b = cluster_interests(_synthetic(), kappa=6, n_users=40, max_entity_id=9, seed=3)
  assert a.pairs == b.pairs


def test_max_entity_id_from_entity_list():
  assert max_entity_id(FIX / "tiny") == 79


def test_cli_writes_release_format(tmp_path):
  run = tmp_path / "run"
  run.mkdir()
  answers = [
    "space opera, galactic empire",
    "space opera, robots",
    "medieval history, castles",
    "medieval history, knights",
    "detective mystery, noir",
    "detective mystery, Sherlock Holmes",
    "space opera",
    "castles, knights",
    "robots, galactic empire",
    "noir",
    "knights",
    "robots",
  ]
  with open(run / "results.jsonl", "w") as f:
    for u, a in enumerate(answers):
      f.write(
        json.dumps({"custom_id": f"user-{u}", "ok": True, "text": a, "finish_reason": "stop"})
        + "\n"
      )
  stats = structure.main(
    [
      "--run_dir",
      str(run),
      "--data_dir",
      str(FIX),
      "--dataset",
      "tiny",
      "--kappa",
      "5",
      "--seed",
      "1",
    ]
  )
  out = run / "structured"
  rows = np.loadtxt(out / "user_interest_clustered.txt", dtype=int, ndmin=2)
  assert rows.shape[1] == 2 and rows[:, 1].min() >= 80 and rows[:, 1].max() < 85
  assert stats["users_covered"] == len(set(rows[:, 0])) and stats["edges"] == len(rows)
  assert len({tuple(r) for r in rows}) == len(rows)
  tsv = (out / "interest_clusters.tsv").read_text().splitlines()
  assert tsv[0].startswith("interest_id") and len(tsv) - 1 == stats["clusters_kept"]
  assert json.loads((out / "stats.json").read_text())["kappa_used"] == 5


def test_too_few_phrases_is_a_clear_error():
  with pytest.raises(ValueError, match="nothing to cluster"):
    cluster_interests({1: ["magic"]}, 5, 10, 0)


def test_echo_fraction():
  from inference.structure import echo_fraction

  reqs = [
    {
      "custom_id": "user-1",
      "body": {
        "messages": [
          {"role": "system", "content": "s"},
          {"role": "user", "content": "[The Lord of the Rings, Dune]"},
        ]
      },
    }
  ]
  assert echo_fraction({1: ["lord ring", "space opera"]}, reqs) == 0.5
  assert echo_fraction({2: ["x"]}, reqs) is None

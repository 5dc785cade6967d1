"""Imports a KGAT-style dataset that follows other conventions into the layout the loader expects
(README "Bring your own dataset"): users 0..n-1, items 0..n_items-1 equal to the first KG entity
ids, interest ids right above the entities. Following the loader's error messages by hand (e.g.
shifting users numbered from 1) would load such data with the KG attached to the wrong items.

  python -m cikg_jax.data.convert --format=kgat --src=raw/mydata --out=data/mydata

Source (`--src`), every file with the usual name, fields separated by spaces or tabs:
  train.txt, test.txt   `user item item ...`; user ids any integers (e.g. numbered from 1); item ids
                        one column of item_list.txt, found by matching (--item_ids to choose)
  item_list.txt         `org_id remap_id [third column, e.g. freebase_id or a name]` with header
  kg_final.txt          `head relation tail` in KG entity ids (optional)
  entity_list.txt, relation_list.txt   `org_id remap_id [name]` with header (optional)
  user_interest_clustered.txt          `user interest_id` in source user ids (optional)

Items are attached to KG entities by their remap id where entity_list.txt confirms it (same org id or
name), otherwise by org id / name / URI. Refused, writing nothing: an id column that matches few
train/test ids or an ambiguous one, more than MAX_UNMATCHED_ITEMS of the items matching no entity
(unless --allow_unmatched_items). Dropped, counted, printed and written to
<out>/convert_report.json: interactions with items not in item_list.txt, repeated items of a user,
test items that are also training items, users without training items (and their test items), KG
triples with entities unknown to entity_list.txt, interest pairs of unknown users. The result is
loaded once at the end as a check.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
from typing import Dict, List, Optional, Tuple
import warnings

import numpy as np

from cikg_jax import cli_help
from cikg_jax.data import files

REPORT = "convert_report.json"
# A column is the item-id column when it holds at least this share of the distinct train/test ids.
MIN_ID_MATCH = 0.8
# More than this share of items without a KG entity is refused: it means the lists do not belong
# together (or the wrong column was used), not a few items missing from the KG.
MAX_UNMATCHED_ITEMS = 0.05
# Of several matching columns, one holding every id is taken when the others miss at least this share.
MIN_MISSING = 0.01


def _text(path: str):
  """(line_no, fields) of non-blank lines, with the loader's tokenizer; BOM and CRLF accepted."""
  if not os.path.exists(path):
    files._fail(path, None, "file not found")
  for line_no, line in enumerate(files.read_text(path).split("\n"), 1):
    tokens = files.split_fields(line.rstrip("\r"))
    if tokens:
      yield line_no, tokens


def _int(path: str, line_no: int, token: str, what: str) -> int:
  return files._to_int(path, line_no, token, what)


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


def _item_id_tokens(paths: List[str]) -> set:
  """The distinct item tokens of train/test (user ids checked on the way)."""
  seen = set()
  for path in paths:
    for line_no, tokens in _text(path):
      _int(path, line_no, tokens[0], "user id")
      seen.update(tokens[1:])
  return seen


def item_id_columns(items: files.IdList) -> Dict[str, List[Optional[str]]]:
  """item_list.txt's candidate id columns: org_id, remap_id and a further column (KGAT's
  freebase_id, or a name), each as one value per item (None where absent)."""
  cols = {"org": list(items.org_ids), "remap": [str(r) for r in items.remap_ids]}
  if any(n is not None for n in items.names):
    cols[_third_column_name(items.path)] = list(items.names)
  return cols


def _third_column_name(path: str) -> str:
  header = files.split_fields(files.read_text(path).split("\n", 1)[0].lstrip("\ufeff").rstrip("\r"))
  return header[2] if len(header) > 2 else "name"


def choose_item_id_column(
  items: files.IdList, paths: List[str], choice: str = "auto"
) -> Tuple[str, Dict]:
  """The item_list.txt column that train/test item ids are, by matching the ids against each
  column: the one holding at least MIN_ID_MATCH of the distinct ids (of several, the one holding all
  of them where the others miss at least MIN_MISSING). With `choice` a column name, that column is
  checked the same way. Returns (column, coverage per column)."""
  cols = item_id_columns(items)
  choice = {"org_id": "org", "remap_id": "remap"}.get(choice, choice)
  seen = _item_id_tokens([p for p in paths if os.path.exists(p)])
  n = len(seen)
  coverage = {
    c: (sum(t in vals for t in seen) / n if n else 0.0)
    for c, vals in ((c, set(v for v in values if v is not None)) for c, values in cols.items())
  }
  flag = "--item_ids=" + "|".join(cols)
  shown = ", ".join(f"{c} {coverage[c]:.0%}" for c in cols)
  train = paths[0]
  if choice != "auto":
    if choice not in cols:
      files._fail(
        items.path, 1, f"no column {choice!r} to take item ids from (columns: {', '.join(cols)})"
      )
    if coverage[choice] < MIN_ID_MATCH:
      files._fail(
        train,
        None,
        f"--item_ids={choice}: only {coverage[choice]:.0%} of the {n} distinct train/test item ids are "
        f"{items.path} {choice} values (by column: {shown}); choose the column that holds them ({flag})",
      )
    return choice, coverage
  good = [c for c in cols if coverage[c] >= MIN_ID_MATCH]
  # Columns that map every shared id to the same item are one choice (e.g. org ids equal to remap ids).
  distinct = []
  for c in good:
    if not any(_same_mapping(cols[c], cols[d], seen) for d in distinct):
      distinct.append(c)
  if len(distinct) == 1:
    return distinct[0], coverage
  # Several: small integer ids (1..n) fall largely inside another column's 0..n-1 by chance. A
  # column holding every id beats ones that miss some.
  complete = [c for c in distinct if coverage[c] == 1.0]
  if len(complete) == 1 and all(
    coverage[c] <= 1.0 - MIN_MISSING for c in distinct if c != complete[0]
  ):
    return complete[0], coverage
  if not distinct:
    problem = f"no item_list.txt column holds the train/test item ids (matched by column: {shown})"
  else:
    problem = (
      f"train/test item ids match several item_list.txt columns that map them to different items "
      f"({shown})"
    )
  files._fail(train, None, f"{problem}; choose the column with {flag}")


def _same_mapping(a: List[Optional[str]], b: List[Optional[str]], tokens) -> bool:
  where_a = {v: i for i, v in enumerate(a) if v is not None}
  where_b = {v: i for i, v in enumerate(b) if v is not None}
  return all(where_a.get(t) == where_b.get(t) for t in tokens)


def attach_items_to_entities(items: files.IdList, entities: Optional[files.IdList], report: Dict):
  """Source entity id of each item (None: no entity). The item's remap id when entity_list.txt
  confirms it (same org id or name there), else the entity sharing the item's org id or name/URI
  (the lowest entity id where several do). Two items on one entity: the first in item_list.txt
  order keeps it, the other becomes an entity of its own without KG triples (reported)."""
  if entities is None:  # nothing to check against: KGAT's convention, remap id = entity id
    return list(items.remap_ids), set()
  by_remap = {r: k for k, r in enumerate(entities.remap_ids)}
  by_key = collections.defaultdict(list)
  for k in range(len(entities)):
    for key in entities.keys(k):
      by_key[key].append(k)
  of_item: List[Optional[int]] = []
  for i, r in enumerate(items.remap_ids):
    k = by_remap.get(r)
    keys = items.keys(i)
    if k is not None and keys & entities.keys(k):
      report["items_matched_by_remap_id"] += 1
    else:
      hits = sorted({k for key in keys for k in by_key.get(key, ())})
      k = hits[0] if hits else None
      if hits:
        report["items_matched_by_name"] += 1
    of_item.append(entities.remap_ids[k] if k is not None else None)
  owner: Dict[int, int] = {}
  shared = set()
  for i, e in enumerate(of_item):
    if e is None:
      continue
    if e in owner:
      j = owner[e]
      k = by_remap[e]
      report["items_sharing_an_entity"].append(
        f"{items.path}:{items.line_of[i]}: item {items.org_ids[i]} has the entity of "
        f"{items.path}:{items.line_of[j]} (entity {e}, {entities.org_ids[k]}); that item comes "
        "first in item_list.txt and keeps it, this one gets an entity of its own without KG triples"
      )
      of_item[i] = None
      shared.add(i)
    else:
      owner[e] = i
  return of_item, shared


def convert_kgat(
  src: str,
  out: str,
  item_ids: str = "auto",
  user_order: str = "first",
  allow_unmatched_items: bool = False,
) -> Dict:
  """Converts `src` into `out` (a dataset folder) and returns the report. Everything is read and
  checked before the first file is written: a refusal leaves `out` untouched."""
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
      "items_matched_by_remap_id",
      "items_matched_by_name",
    )
  }
  report["items_sharing_an_entity"] = []
  report["items_without_entity"] = []
  p = lambda name: os.path.join(src, name)
  items = files.read_id_list(p("item_list.txt"), dense=False)
  column, coverage = choose_item_id_column(items, [p("train.txt"), p("test.txt")], item_ids)
  ids = item_id_columns(items)[column]
  # Item i is the i-th item in item_list.txt remap_id order and becomes entity i.
  n_items = len(items)
  item_of: Dict[str, int] = {}
  for i, v in enumerate(ids):
    if v is None:
      continue
    if v in item_of:
      j = item_of[v]
      files._fail(
        items.path,
        items.line_of[i],
        f"{column} {v!r} already on line {items.line_of[j]}: train/test ids in this column "
        "cannot name one item (choose another column with --item_ids)",
      )
    item_of[v] = i

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

  entities = (
    files.read_id_list(p("entity_list.txt"), dense=False)
    if os.path.exists(p("entity_list.txt"))
    else None
  )
  source_entity, shared = attach_items_to_entities(items, entities, report)
  unmatched = [i for i, e in enumerate(source_entity) if e is None and i not in shared]
  report["items_not_matching_entity_list"] = n_bad = len(unmatched)
  report["items_without_entity"] = [f"{items.path}:{items.line_of[i]}: {ids[i]}" for i in unmatched]
  if n_bad > MAX_UNMATCHED_ITEMS * n_items and not allow_unmatched_items:
    first = unmatched[0]
    names = " / ".join(sorted(items.keys(first))) or "no id"
    files._fail(
      items.path,
      items.line_of[first],
      f"item {names} matches no entity of {entities.path} (by remap id, org id or name/URI); "
      f"{n_bad} of {n_items} items match none (more than {MAX_UNMATCHED_ITEMS:.0%}): the lists "
      "do not belong together. Pass --allow_unmatched_items to import them as items without KG "
      "triples",
    )
  ent_remaps = entities.remap_ids if entities is not None else []
  kg = _read_source_kg(p("kg_final.txt")) if os.path.exists(p("kg_final.txt")) else None
  item_entities = {e for e in source_entity if e is not None}
  known = set(ent_remaps) | item_entities if entities is not None else None
  if kg is not None and known is not None:
    ok = np.array([h in known and t in known for h, _, t in kg.tolist()], dtype=bool)
    report["kg_triples_with_unknown_entities"] = int((~ok).sum())
    kg = kg[ok]
  # Entities: item i is entity i; the other entities follow in source id order.
  others = sorted(
    (set(ent_remaps) | (set(kg[:, [0, 2]].ravel().tolist()) if kg is not None else set()))
    - item_entities
  )
  entity_of = {e: i for i, e in enumerate(source_entity) if e is not None}
  entity_of.update({e: n_items + k for k, e in enumerate(others)})
  n_entities = n_items + len(others)

  rels, new_kg = [], None
  if kg is not None and len(kg):
    rels = sorted(set(kg[:, 1].tolist()))
    rel_of = {r: k for k, r in enumerate(rels)}
    new_kg = np.array([(entity_of[h], rel_of[r], entity_of[t]) for h, r, t in kg.tolist()])
    uniq, first = np.unique(new_kg, axis=0, return_index=True)
    report["kg_duplicate_triples"] = len(new_kg) - len(uniq)
    new_kg = new_kg[np.sort(first)]
  rel_names = {}
  if rels and os.path.exists(p("relation_list.txt")):
    rl = files.read_id_list(p("relation_list.txt"), dense=False)
    rel_names = dict(zip(rl.remap_ids, rl.org_ids))

  interest_rows, n_interests = None, 0
  if os.path.exists(p("user_interest_clustered.txt")):
    pairs = []
    path = p("user_interest_clustered.txt")
    for line_no, tokens in _text(path):
      if len(tokens) != 2:
        files._fail(path, line_no, f"expected 'uid interest_id', got {len(tokens)} tokens")
      u, v = (_int(path, line_no, t, w) for t, w in zip(tokens, ("user id", "interest id")))
      if u not in user_of:
        report["interest_pairs_of_unknown_users"] += 1
      else:
        pairs.append((user_of[u], v))
    # Interest ids are renumbered densely right above the entities, in source id order.
    ids_ = sorted({v for _, v in pairs})
    interest_of = {v: n_entities + k for k, v in enumerate(ids_)}
    if pairs:
      interest_rows = np.array([(u, interest_of[v]) for u, v in pairs])
    n_interests = len(ids_)

  # Each item keeps its source id (the train/test id) and a name: its org id or further column,
  # whichever is not the id (a URI, a title).
  def item_name(i: int) -> Optional[str]:
    for c, vals in item_id_columns(items).items():
      v = vals[i]
      if c not in (column, "remap") and v is not None and v.lower() not in files.NAMELESS:
        return v
    return None

  item_lines = [
    " ".join([ids[i] if ids[i] is not None else items.org_ids[i], str(i)])
    + (f" {item_name(i)}" if item_name(i) else "")
    + "\n"
    for i in range(n_items)
  ]
  ent_index = {r: k for k, r in enumerate(ent_remaps)}
  entity_lines = list(item_lines)  # item i is entity i, with the same org id (the loader checks it)
  for e in others:
    k = ent_index.get(e)
    org, name = (entities.org_ids[k], entities.names[k]) if k is not None else (str(e), None)
    entity_lines.append(" ".join([org, str(entity_of[e])] + ([name] if name else [])) + "\n")

  report.update(
    source=os.path.abspath(src),
    item_ids=column,
    item_id_match=coverage,
    user_order=user_order,
    users=len(users),
    items=n_items,
    entities=n_entities,
    relations=len(rels),
    interests=n_interests,
    train_interactions=sum(map(len, new_train.values())),
    test_interactions=sum(map(len, new_test.values())),
    kg_triples=int(len(new_kg)) if new_kg is not None else 0,
  )

  os.makedirs(out, exist_ok=True)
  o = lambda name: os.path.join(out, name)
  files.write_user_items(o("train.txt"), new_train)
  files.write_user_items(o("test.txt"), new_test)
  with open(o("user_list.txt"), "w", encoding="utf-8") as f:
    f.write("org_id remap_id\n")
    f.writelines(f"{u} {k}\n" for k, u in enumerate(users))
  with open(o("item_list.txt"), "w", encoding="utf-8") as f:
    f.write("org_id remap_id item_name\n")
    f.writelines(item_lines)
  with open(o("entity_list.txt"), "w", encoding="utf-8") as f:
    f.write("org_id remap_id entity_name\n")
    f.writelines(entity_lines)
  if new_kg is not None:
    files.write_rows(o("kg_final.txt"), new_kg)
    with open(o("relation_list.txt"), "w", encoding="utf-8") as f:
      f.write("org_id remap_id\n")
      f.writelines(f"{rel_names.get(r, r)} {k}\n" for k, r in enumerate(rels))
  if interest_rows is not None:
    files.write_rows(o("user_interest_clustered.txt"), interest_rows)
  with open(o(REPORT), "w", encoding="utf-8") as f:
    json.dump(report, f, indent=1, sort_keys=True, ensure_ascii=False)
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
  ap = cli_help.ArgumentParser(
    description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
  )
  ap.add_argument("--format", choices=["kgat"], default="kgat")
  ap.add_argument("--src", required=True, help="source dataset folder")
  ap.add_argument("--out", required=True, help="new dataset folder: <data_dir>/<name>")
  ap.add_argument(
    "--item_ids",
    default="auto",
    help="which item_list.txt column train.txt/test.txt item ids are: org, remap, the further "
    "column's header name (e.g. freebase_id), or auto (default: the one column matching at least "
    f"{MIN_ID_MATCH * 100:.0f}%% of them)",
  )
  ap.add_argument(
    "--user_order",
    choices=["first", "sorted"],
    default="first",
    help="new user ids by first appearance in train.txt or by sorted source id",
  )
  ap.add_argument(
    "--allow_unmatched_items",
    action="store_true",
    help=f"import items without a KG entity (more than {MAX_UNMATCHED_ITEMS * 100:.0f}%% are refused)",
  )
  ap.add_argument("--force", action="store_true", help="overwrite an existing dataset in --out")
  a = ap.parse_args(argv)
  if os.path.exists(os.path.join(a.out, "train.txt")) and not a.force:
    sys.exit(f"error: {a.out}: already holds a dataset; pass --force to overwrite it")
  if not os.path.isdir(a.src):
    sys.exit(f"error: {a.src}: no such folder (--src)")
  try:
    report = convert_kgat(a.src, a.out, a.item_ids, a.user_order, a.allow_unmatched_items)
  except files.DataFormatError as e:
    sys.exit(f"error: {e}")
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
  for line in report["items_sharing_an_entity"]:
    print(line)
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

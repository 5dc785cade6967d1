"""Bring your own dataset: the KGAT importer (users from 1, raw item ids, items interleaved with KG
entities) and configs for any dataset name."""

import json
import logging
import os
import subprocess
import sys

import numpy as np
import pytest

from cikg_jax.data import convert, files
from cikg_jax.data import dataset as dataset_lib

FIX = os.path.join(os.path.dirname(__file__), "data_fixtures", "kgat_onebased")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _ids(path):
  lst = files.read_id_list(path)
  return {org: i for i, org in enumerate(lst.org_ids)}


def test_convert_kgat_remaps_users_items_entities_and_loads(tmp_path, capsys, caplog):
  caplog.set_level(logging.INFO, logger="cikg_jax")
  out = tmp_path / "mydata"
  report = convert.main(["--format=kgat", f"--src={FIX}", f"--out={out}"])
  ds = dataset_lib.load_dataset(str(tmp_path), "mydata", selection="test")
  assert (ds.n_users, ds.n_items, ds.n_entities, ds.n_relations, ds.n_interests) == (3, 4, 8, 2, 2)
  users, items = _ids(out / "user_list.txt"), _ids(out / "item_list.txt")
  entities, relations = _ids(out / "entity_list.txt"), _ids(out / "relation_list.txt")
  assert users == {"1": 0, "2": 1, "5": 2}  # order of first appearance; user 3 had no known item
  assert items == {"b-101": 0, "b-205": 1, "b-333": 2, "b-404": 3}
  # source user 5 read "b-205" (The Hobbit, source entity 3): now (2, 1)
  assert (users["5"], items["b-205"]) == (2, 1) and [2, 1] in ds.train.tolist()
  # source triple (3 "The Hobbit", 7 author, 2 Tolkien): item i is entity i
  hobbit, author, tolkien = (
    entities["b-205"],
    relations["http://example.org/author"],
    entities["author:tolkien"],
  )
  assert (hobbit, author, tolkien) == (1, 1, 5) and [1, 1, 5] in ds.kg.tolist()
  assert ds.test.tolist() == [[0, 2], [1, 0], [2, 0]]  # user 2's b-333 was a training item too
  assert sorted(map(tuple, ds.user_interest.tolist())) == [(0, 8), (1, 8), (2, 9)]
  saved = json.loads((out / "convert_report.json").read_text())
  assert saved == report
  assert {
    k: saved[k]
    for k in (
      "train_interactions_with_unknown_items",
      "train_repeated_items",
      "users_without_training_items",
      "test_items_also_in_train",
      "test_items_of_dropped_users",
      "kg_triples_with_unknown_entities",
      "kg_duplicate_triples",
      "interest_pairs_of_unknown_users",
      "items_not_matching_entity_list",
    )
  } == {
    "train_interactions_with_unknown_items": 2,
    "train_repeated_items": 1,
    "users_without_training_items": 1,
    "test_items_also_in_train": 1,
    "test_items_of_dropped_users": 1,
    "kg_triples_with_unknown_entities": 1,
    "kg_duplicate_triples": 1,
    "interest_pairs_of_unknown_users": 1,
    "items_not_matching_entity_list": 0,
  }
  printed = capsys.readouterr().out
  assert "users_without_training_items': 1" in printed
  # the converted dataset loads: its summary is logged (the loaders log instead of printing)
  assert "users 3  items 4" in caplog.text
  with pytest.raises(SystemExit, match="--force"):
    convert.main(["--format=kgat", f"--src={FIX}", f"--out={out}"])


def test_convert_cli_shows_the_loaded_datasets_summary(tmp_path):
  p = subprocess.run(
    [
      sys.executable,
      "-m",
      "cikg_jax.data.convert",
      "--format=kgat",
      f"--src={FIX}",
      f"--out={tmp_path / 'mydata'}",
    ],
    capture_output=True,
    text=True,
    cwd=ROOT,
    timeout=120,
    env=dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")),
  )
  assert p.returncode == 0, p.stderr
  assert "train with: python -m cikg_jax.main" in p.stdout
  assert "users 3  items 4" in p.stdout + p.stderr


def test_convert_sorted_user_order(tmp_path):
  convert.convert_kgat(FIX, str(tmp_path / "d"), user_order="sorted")
  assert _ids(tmp_path / "d" / "user_list.txt") == {"1": 0, "2": 1, "5": 2}
  (tmp_path / "src").mkdir()
  for name in os.listdir(FIX):
    text = open(os.path.join(FIX, name)).read()
    if name == "train.txt":  # user 5 first
      text = "".join(
        sorted(text.splitlines(True), key=lambda line: line.startswith("5 "), reverse=True)
      )
    (tmp_path / "src" / name).write_text(text)
  convert.convert_kgat(str(tmp_path / "src"), str(tmp_path / "e"), user_order="first")
  assert _ids(tmp_path / "e" / "user_list.txt") == {"5": 0, "1": 1, "2": 2}
  convert.convert_kgat(str(tmp_path / "src"), str(tmp_path / "f"), user_order="sorted")
  assert _ids(tmp_path / "f" / "user_list.txt") == {"1": 0, "2": 1, "5": 2}


def test_the_source_itself_is_refused_by_the_loader():
  with pytest.raises(
    files.DataFormatError, match=r"item_list.txt:4: remap_id 4 out of range.*0 is missing"
  ):
    dataset_lib.load_dataset(os.path.dirname(FIX), os.path.basename(FIX))


@pytest.mark.parametrize("module", ["lightgcn", "base"])
def test_configs_accept_any_dataset_name(module):
  import importlib

  from configs import base

  c = importlib.import_module(f"configs.{module}").get_config("mydata")
  ref = base.get_config()
  assert c.dataset == "mydata"
  assert c.train.lr == ref.train.lr and c.model.num_layers == ref.model.num_layers
  if module == "lightgcn":
    assert not c.model.use_kg_edges and c.cl.weight == 0.0
    assert importlib.import_module("configs.lightgcn").get_config("ml1m").train.lr == 5e-4


DBP = os.path.join(os.path.dirname(__file__), "data_fixtures", "kgat_dbpedia")
R = "http://dbpedia.org/resource/"


def _lines(path):
  return open(path, encoding="utf-8").read().splitlines()


def _copy_fixture(dst, **edits):
  dst.mkdir()
  for name in os.listdir(DBP):
    text = open(os.path.join(DBP, name), encoding="utf-8").read()
    (dst / name).write_text(edits.get(name, lambda t: t)(text), encoding="utf-8")
  return str(dst)


def test_convert_kgat_dbpedia_variant_without_options_matches_the_hand_worked_conversion(tmp_path):
  """Ids in a third column, items found by URI (one with U+00A0) among interleaved entities, two
  movies on one URI, users from 1: converted with no option into item i = entity i by URI."""
  out = tmp_path / "ml"
  report = convert.main(["--format=kgat", f"--src={DBP}", f"--out={out}"])
  assert report["item_ids"] == "freebase_id"
  assert report["item_id_match"] == {"org": 0.0, "remap": 1 / 6, "freebase_id": 1.0}
  # items in item_list order; source ids (the movie ids) and URIs kept
  assert _lines(out / "item_list.txt") == [
    "org_id remap_id item_name",
    f"2 0 {R}Am\u00e9lie",
    f"11 1 {R}Le\u00a0Samoura\u00ef",
    f"17 2 {R}Solaris_(1972_film)",
    f"23 3 {R}Stalker_(1979_film)",
    f"31 4 {R}Solaris_(1972_film)",
    f"40 5 {R}Delicatessen_(film)",
  ]
  # the other entities follow in source id order: 0 French films, 2 Jeunet, 5 Tarkovsky, 7 Soviet
  assert _lines(out / "entity_list.txt")[7:] == [
    f"{R}Category:French_films 6",
    f"{R}Jean-Pierre_Jeunet 7",
    f"{R}Andrei_Tarkovsky 8",
    f"{R}Category:Soviet_films 9",
  ]
  # source entities 1 3 4 6 8 -> items 0 1 2 3 5; movie 31 (Solaris again) is entity 4 of its own
  assert _lines(out / "kg_final.txt") == [
    "0 0 6",
    "0 1 7",
    "5 1 7",
    "5 0 6",
    "1 0 6",
    "2 1 8",
    "3 1 8",
    "2 0 9",
    "3 0 9",
  ]
  assert _lines(out / "user_list.txt") == ["org_id remap_id", "1 0", "2 1", "3 2"]
  assert _lines(out / "train.txt") == ["0 0 1 5", "1 2 3 0", "2 4 3 1"]
  assert _lines(out / "test.txt") == ["0 2", "1 5", "2 0 2"]
  # movie 31's remap id 4 happens to be Solaris' entity id too; movie 17 still comes first
  assert report["items_matched_by_name"] == 5 and report["items_matched_by_remap_id"] == 1
  assert report["items_not_matching_entity_list"] == 0
  (shared,) = report["items_sharing_an_entity"]
  assert "item_list.txt:6:" in shared and "item_list.txt:4 (entity 4" in shared
  assert "keeps it" in shared
  ds = dataset_lib.load_dataset(str(tmp_path), "ml", selection="test")
  assert (ds.n_users, ds.n_items, ds.n_entities, ds.n_relations) == (3, 6, 10, 2)


def test_convert_refuses_a_wrong_id_column_and_writes_nothing(tmp_path, capsys):
  out = tmp_path / "ml"
  with pytest.raises(SystemExit) as e:
    convert.main(["--format=kgat", f"--src={DBP}", f"--out={out}", "--item_ids=remap"])
  msg = str(e.value.code)
  assert msg.startswith("error: ") and "\n" not in msg
  assert "--item_ids=remap: only 17% of the 6 distinct train/test item ids" in msg
  assert "freebase_id 100%" in msg and "--item_ids=org|remap|freebase_id" in msg
  assert not out.exists()
  with pytest.raises(files.DataFormatError, match=r"--item_ids=remap: only 17%"):  # header name
    convert.convert_kgat(DBP, str(out), item_ids="remap_id")
  with pytest.raises(SystemExit, match=r"error: .*no column 'isbn'"):
    convert.main(["--format=kgat", f"--src={DBP}", f"--out={out}", "--item_ids=isbn"])
  assert not out.exists()


def test_convert_refuses_two_columns_that_map_ids_differently(tmp_path):
  # the movie ids 2 11 17 23 31 40 become the org ids too, in another order
  swap = dict(zip("2 11 17 23 31 40".split(), "11 2 23 17 40 31".split()))

  def items(text):
    rows = [text.splitlines()[0]]
    for line in text.splitlines()[1:]:
      _, remap, movie = line.split(" ")[0], line.split(" ")[1].split("\t")[0], line.split("\t")[1]
      rows.append(f"{swap[movie]} {remap}\t{movie}")
    return "\n".join(rows) + "\n"

  src = _copy_fixture(tmp_path / "src", **{"item_list.txt": items})
  with pytest.raises(files.DataFormatError, match=r"train.txt: train/test item ids match several"):
    convert.convert_kgat(src, str(tmp_path / "out"))
  assert not (tmp_path / "out").exists()
  chosen = convert.convert_kgat(
    src, str(tmp_path / "out"), item_ids="freebase_id", allow_unmatched_items=True
  )
  assert chosen["item_ids"] == "freebase_id" and chosen["items"] == 6


def test_convert_takes_the_column_holding_every_id_over_one_matching_most_by_chance(tmp_path):
  """Movie ids 1..6 lie mostly inside the remap ids 0..5 (83%); the column holding all is taken."""
  new = {"2": "1", "11": "2", "17": "3", "23": "4", "31": "5", "40": "6"}
  renumber = lambda t: "".join(
    " ".join([ln.split(" ")[0]] + [new[x] for x in ln.split(" ")[1:]]) + "\n"
    for ln in t.splitlines()
  )
  items = lambda t: "".join(
    ln.split("\t")[0] + "\t" + new.get(ln.split("\t")[1], ln.split("\t")[1]) + "\n"
    if "\t" in ln
    else ln + "\n"
    for ln in t.splitlines()
  )
  src = _copy_fixture(
    tmp_path / "src", **{"item_list.txt": items, "train.txt": renumber, "test.txt": renumber}
  )
  report = convert.convert_kgat(src, str(tmp_path / "out"))
  assert report["item_ids"] == "freebase_id"
  assert report["item_id_match"] == {"org": 0.0, "remap": 5 / 6, "freebase_id": 1.0}
  assert _lines(tmp_path / "out" / "train.txt") == ["0 0 1 5", "1 2 3 0", "2 4 3 1"]


def test_convert_refuses_items_matching_no_entity_unless_allowed(tmp_path):
  def fewer(text):  # Stalker and Delicatessen leave the entity list
    return "".join(
      line for line in text.splitlines(True) if "Stalker" not in line and "Delic" not in line
    )

  src = _copy_fixture(tmp_path / "src", **{"entity_list.txt": fewer})
  out = tmp_path / "out"
  with pytest.raises(files.DataFormatError) as e:
    convert.convert_kgat(src, str(out))
  assert str(e.value).startswith(os.path.join(src, "item_list.txt") + ":5: item ")
  assert "2 of 6 items match none" in str(e.value) and "--allow_unmatched_items" in str(e.value)
  assert not out.exists()
  report = convert.convert_kgat(src, str(out), allow_unmatched_items=True)
  assert report["items_not_matching_entity_list"] == 2
  assert [s.split(": ")[1] for s in report["items_without_entity"]] == ["23", "40"]
  # they are items (and entities) without KG triples; triples of dropped entities are counted
  assert report["kg_triples_with_unknown_entities"] == 4
  ds = dataset_lib.load_dataset(str(tmp_path), "out", selection="test")
  assert ds.n_items == 6 and not np.isin([3, 5], ds.kg[:, [0, 2]]).any()


def test_convert_failures_are_one_line_errors(tmp_path):
  def run(*args):
    p = subprocess.run(
      [sys.executable, "-m", "cikg_jax.data.convert", "--format=kgat", *args],
      capture_output=True,
      text=True,
      cwd=ROOT,
      timeout=120,
      env=dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")),
    )
    assert p.returncode != 0 and p.stdout == ""
    assert p.stderr.count("\n") == 1 and p.stderr.startswith("error: "), p.stderr
    return p.stderr

  out = tmp_path / "out"
  assert "--item_ids=remap: only 17%" in run(f"--src={DBP}", f"--out={out}", "--item_ids=remap")
  assert f"error: {tmp_path}/nope: no such folder" in run(f"--src={tmp_path}/nope", f"--out={out}")
  bad = _copy_fixture(tmp_path / "bad", **{"train.txt": lambda t: t + "x1 2\n"})
  assert f"error: {bad}/train.txt:4: non-integer user id 'x1'" in run(
    f"--src={bad}", f"--out={out}"
  )
  latin = _copy_fixture(tmp_path / "latin")
  (tmp_path / "latin" / "entity_list.txt").write_bytes(
    "org_id remap_id\nAm\u00e9lie 0\n".encode("latin-1")
  )
  assert f"{latin}/entity_list.txt:2: byte 0xe9 at byte offset 18 is not UTF-8" in run(
    f"--src={latin}", f"--out={out}"
  )
  assert not out.exists()


def test_a_kgat_variant_of_dbbook2014_imports_without_options_into_the_same_dataset(
  tmp_path, data_dir
):
  """dbbook2014 rewritten in another repository's conventions: users from 1, train/test holding
  the book ids (item_list's third column), item remap ids that are not entity ids, entities
  shuffled so the items lie among them, a URI with U+00A0, two items on one URI. Imported with no
  option, it is the shipped dataset again: same train/test, same KG by URI."""
  src_dir, out = tmp_path / "src", tmp_path / "out"
  src_dir.mkdir()
  orig = os.path.join(data_dir, "dbbook2014")
  items = files.read_id_list(os.path.join(orig, "item_list.txt"))
  ents = files.read_id_list(os.path.join(orig, "entity_list.txt"))
  uri = list(ents.org_ids)
  uri[5] = uri[5].replace("_", "\u00a0")
  perm = np.random.default_rng(0).permutation(len(uri))  # source entity id of entity e
  item_uri = [uri[i] for i in range(len(items))]
  item_uri[7] = item_uri[6]  # two items on one URI: item 7 loses its entity
  w = lambda name, text: (src_dir / name).write_text(text, encoding="utf-8")
  w(
    "entity_list.txt",
    "org_id remap_id\n" + "".join(f"{uri[e]} {perm[e]}\n" for e in range(len(uri))),
  )
  w(
    "item_list.txt",
    "org_id remap_id freebase_id\n"
    + "".join(f"{item_uri[i]} {i} {items.org_ids[i]}\n" for i in range(len(items))),
  )
  kg = files.read_triples(os.path.join(orig, "kg_final.txt"))
  w("kg_final.txt", "".join(f"{perm[h]} {r} {perm[t]}\n" for h, r, t in kg.tolist()))
  for name in ("train.txt", "test.txt"):
    rows = files.read_user_items(os.path.join(orig, name), allow_empty=True)
    w(
      name,
      "".join(
        f"{u + 1} " + " ".join(items.org_ids[i] for i in its) + "\n" for u, its in rows.items()
      ),
    )

  report = convert.convert_kgat(str(src_dir), str(out))
  assert report["item_ids"] == "freebase_id" and report["items_not_matching_entity_list"] == 0
  assert (
    len(report["items_sharing_an_entity"]) == 1 and ":9: " in report["items_sharing_an_entity"][0]
  )
  for name in ("train.txt", "test.txt"):
    assert _lines(out / name) == [ln for ln in _lines(os.path.join(orig, name)) if ln]
  new_items = files.read_id_list(str(out / "item_list.txt"))
  assert new_items.org_ids == items.org_ids and new_items.names == item_uri
  # the KG as URI triples: the same; item i is KG entity i
  new_ents = files.read_id_list(str(out / "entity_list.txt"))
  new_uri = [
    new_ents.names[e] if e < len(items) else new_ents.org_ids[e] for e in range(len(new_ents))
  ]
  new_uri[7] = "(item 7's own entity)"
  new_kg = files.read_triples(str(out / "kg_final.txt"))
  as_uris = lambda triples, names: {(names[h], r, names[t]) for h, r, t in triples.tolist()}
  assert as_uris(new_kg, new_uri) == as_uris(kg, uri)
  assert new_uri[: len(items)] == [u if i != 7 else new_uri[7] for i, u in enumerate(item_uri)]

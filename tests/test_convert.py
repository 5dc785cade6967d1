"""Bring your own dataset: the KGAT importer (users from 1, raw item ids, items interleaved with KG
entities) and configs for any dataset name."""

import json
import logging
import os
import subprocess
import sys

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

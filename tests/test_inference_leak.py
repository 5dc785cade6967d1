"""LLM prompts exclude the trainer's validation split by default (issue: validation items leaked)."""

import os

from cikg_jax.data import dataset as dataset_lib
from configs.llm import _base as llm_base
from inference import generate
from inference.history import read_item_titles


def _config(data_dir, dataset):
  c = llm_base.base_config()
  c.data_dir, c.dataset = data_dir, dataset
  c.model.served_name = "m"
  return c


def _trainer_valid(data_dir, dataset):
  ds = dataset_lib.load_dataset(data_dir, dataset, selection="valid", seed=2024)
  out = {}
  for u, i in ds.valid:
    out.setdefault(int(u), set()).add(int(i))
  return out


def test_default_prompts_hold_out_exactly_the_trainers_validation_split(data_dir):
  c = _config(data_dir, "dbbook2014")
  history, held = generate.prompt_history(c)
  assert {u: set(v) for u, v in held.items() if v} == _trainer_valid(data_dir, "dbbook2014")
  titles = read_item_titles(os.path.join(data_dir, "dbbook2014", "item_list.txt"))
  assert generate.validation_items_in_prompts(history, held, titles, 30) == {"users": 0, "items": 0}
  # the same count on the whole train.txt finds the leak the old default had
  c.split.selection = "test"
  full, _ = generate.prompt_history(c)
  leak = generate.validation_items_in_prompts(full, held, titles, 30)
  assert leak["users"] > 4000 and leak["items"] > 5000
  # and the requests themselves never show a held-out title that the history lacks
  c.split.selection = "valid"
  c.limit = 50
  reqs = generate.make_requests(c)
  assert len(reqs) == 50
  from inference.requests import uid_of

  checked = 0
  for r in reqs:
    u = uid_of(r["custom_id"])
    text = " ".join(m["content"] for m in r["body"]["messages"])
    shown = {titles[i] for i in history[u] if i in titles}
    # a held-out title that is no shown title's substring must not be in the prompt
    for i in held.get(u, ()):
      t = titles.get(i)
      if t and not any(t in s for s in shown):
        assert t not in text, (u, t)
        checked += 1
  assert checked > 20


def test_trainer_split_does_not_move_with_the_training_seed(data_dir):
  base = dataset_lib.load_dataset(data_dir, "dbbook2014", selection="valid", seed=2024)
  from configs import base as base_cfg

  c = base_cfg.get_config()
  c.data_dir = data_dir
  c.seed = 7
  other = dataset_lib.load_from_config(c)
  assert (base.valid == other.valid).all()
  c.split_seed = -1  # the old behaviour: the split follows the training seed
  moved = dataset_lib.load_from_config(c)
  assert moved.valid.shape != base.valid.shape or not (moved.valid == base.valid).all()


def test_manifest_records_the_split(tmp_path):
  fixtures = os.path.join(os.path.dirname(__file__), "inference_fixtures")
  c = _config(fixtures, "tiny")
  history, held = generate.prompt_history(c)
  info = generate.split_info(c, held)
  assert info["selection"] == "valid" and info["split_seed"] == 2024
  assert info["held_out_items"] == sum(len(v) for v in held.values()) > 0
  assert not any(set(history[u]) & set(held.get(u, ())) for u in history)

"""experiments/llm_swap.py against a stand-in for cikg_jax.training.train.train_and_evaluate."""

import importlib.util
import json
from pathlib import Path

from absl import flags
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("llm_swap", ROOT / "experiments" / "llm_swap.py")
llm_swap = importlib.util.module_from_spec(spec)
spec.loader.exec_module(llm_swap)


def test_parse_variants():
  assert llm_swap.parse_variants("shipped, none,x=a.txt") == [
    ("shipped", None),
    ("none", None),
    ("x", "a.txt"),
  ]
  for bad in ("foo", "shipped=a", "x=a,x=b"):
    with pytest.raises(ValueError):
      llm_swap.parse_variants(bad)


def test_shuffle_keeps_degrees():
  rng = np.random.default_rng(0)
  pairs = np.unique(np.stack([rng.integers(0, 50, 300), rng.integers(100, 130, 300)], 1), axis=0)
  sh = llm_swap.shuffle_interests(pairs, seed=1)
  assert len(sh) <= len(pairs) and len(sh) > 0.9 * len(pairs)
  assert not np.array_equal(sh, pairs)
  assert set(sh[:, 1]) <= set(pairs[:, 1]) and set(sh[:, 0]) <= set(pairs[:, 0])


def test_run_and_render_with_fake_trainer(tmp_path):
  data = tmp_path / "data" / "toy"
  data.mkdir(parents=True)
  (data / "user_interest_clustered.txt").write_text("0 10\n0 11\n1 10\n2 12\n")
  gen = tmp_path / "gen.txt"
  gen.write_text("0 13\n1 13\n")
  cfg = tmp_path / "cfg.py"
  cfg.write_text(
    "import ml_collections\n"
    "def get_config():\n"
    "    c = ml_collections.ConfigDict()\n"
    "    c.dataset = ''; c.data_dir = ''; c.interest_file = ''\n"
    "    c.model = ml_collections.ConfigDict({'use_interest_edges': True})\n"
    "    c.train = ml_collections.ConfigDict({'max_epochs': 100})\n"
    "    return c\n"
  )
  seen = []

  def fake_train(config, workdir):
    seen.append((config.interest_file, config.model.use_interest_edges, config.train.max_epochs))
    res = {
      "best_epoch": 3,
      "train_seconds": 1.0,
      "devices": ["cpu"],
      "test": {"recall@20": 0.1 * len(seen), "ndcg@20": 0.05},
      "test_groups": [
        {"group": 0, "n_users": 5, "train_interactions": [1, 3], "recall@20": 0.2, "ndcg@20": 0.1}
      ],
    }
    Path(workdir).mkdir(parents=True, exist_ok=True)
    (Path(workdir) / "results.json").write_text(json.dumps(res))
    return res

  # the command line through config_flags, as `python experiments/llm_swap.py ...` parses it
  argv = [
    "llm_swap.py",
    "--dataset=toy",
    f"--data_dir={tmp_path / 'data'}",
    f"--config={cfg}",
    f"--variants=shipped,none,shuffled,smol={gen}",
    "--config.train.max_epochs=7",
    "--seed=0",
    f"--workdir={tmp_path / 'wd'}",
  ]
  fv = flags.FlagValues()
  llm_swap.define_flags(argv, fv)
  fv(argv)
  config = llm_swap.base_config(fv)
  assert config.dataset == "toy" and config.data_dir == str((tmp_path / "data").resolve())
  rows = llm_swap.run(config, fv.variants, fv.workdir, fv.seed, train_fn=fake_train)
  assert [s[1] for s in seen] == [True, False, True, True] and all(s[2] == 7 for s in seen)
  assert seen[0][0] == "" and seen[2][0].endswith("shuffled_user_interest_clustered.txt")
  assert seen[3][0] == str(gen.resolve())
  assert rows[3]["interests"] == {"edges": 2, "users": 2, "nodes": 1}
  md = llm_swap.render(rows, "toy", "note")
  assert (
    "| smol | 2 / 2 / 1 | 3 | 1 | 0.4000 | 0.0500 |" in md
    and "recall@20 by training-interaction group" in md
  )
  # a second run reuses results.json instead of training again
  again = llm_swap.run(config, fv.variants, fv.workdir, fv.seed, train_fn=fake_train)
  assert all(not r["trained_now"] for r in again) and len(seen) == 4


def test_bad_interest_file_names_line(tmp_path):
  p = tmp_path / "f.txt"
  p.write_text("1 2\n3 x\n")
  with pytest.raises(ValueError, match="f.txt:2"):
    llm_swap.read_pairs(p)


def _parse(argv):
  fv = flags.FlagValues()
  llm_swap.define_flags(argv, fv)
  fv(argv)
  return fv


def test_documented_command_lines_parse(monkeypatch):
  """The docstring's and README's command lines: --dataset picks the dataset's own config unless
  --config names one; --config.KEY=VALUE overrides either (the old --set is gone)."""
  monkeypatch.delenv("CIKG_DATA_DIR", raising=False)
  fv = _parse(
    [
      "llm_swap.py",
      "--dataset",
      "book-crossing",
      "--variants",
      "shipped,none",
      "--config.train.max_epochs=50",
      "--config.train.patience=5",
    ]
  )
  c = llm_swap.base_config(fv)
  assert (c.dataset, c.model.num_layers, c.train.max_epochs, c.train.patience) == (
    "book-crossing",
    4,
    50,
    5,
  )
  assert (
    c.data_dir == str((ROOT.parent / "shared" / "data").resolve()) and fv.variants == "shipped,none"
  )
  fv = _parse(
    [
      "llm_swap.py",
      "--dataset",
      "dbbook2014",
      "--config",
      str(ROOT / "configs" / "lightgcn.py"),
      "--config.train.checkpoint=False",
      "--data_dir=/data",
    ]
  )
  c = llm_swap.base_config(fv)
  assert (c.dataset, c.model.name, c.train.checkpoint, c.data_dir) == (
    "dbbook2014",
    "lightgcn",
    False,
    "/data",
  )
  c = llm_swap.base_config(
    _parse(["llm_swap.py", f"--config={ROOT / 'configs' / 'book_crossing.py'}"])
  )
  assert c.dataset == "book-crossing"  # without --dataset the config's own dataset
  with pytest.raises(flags.Error):
    _parse(["llm_swap.py", "--set", "train.max_epochs=5"])

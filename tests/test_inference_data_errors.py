"""The inference side reads the KGAT files through the trainer's readers: a dataset the trainer
refuses is refused by the prompt builder (inference.generate), the structuring step
(inference.structure) and experiments/llm_swap.py with the trainer's one-line error, in process and
on the command line."""

import importlib.util
import os
from pathlib import Path
import subprocess
import sys
import warnings

import pytest

from cikg_jax.data import dataset as dataset_lib
from cikg_jax.data import files
from configs.llm import _base as llm_base
from inference import generate, structure

ROOT = Path(__file__).resolve().parents[1]

GOOD = {
  "train.txt": "0 0 1\n1 1 2\n2 2 3\n",
  "test.txt": "0 2\n1 3\n2 0\n",
  "item_list.txt": "org_id remap_id entity_name\ni0 0 http://x.org/A\ni1 1 http://x.org/B\n"
  "i2 2 http://x.org/C\ni3 3 http://x.org/D\n",
  "entity_list.txt": "org_id remap_id\ni0 0\ni1 1\ni2 2\ni3 3\ne4 4\ne5 5\n",
  "kg_final.txt": "0 0 4\n1 0 5\n2 1 4\n",
}

# Each breaks one rule of cikg_jax.data.files / dataset. Before the inference side loaded datasets
# as the trainer does, the prompt builder accepted all but the first case and
# structure.max_entity_id (which read entity_list.txt alone) all of them.
BAD = {
  "non-integer item": (
    {"train.txt": "0 0 1\n1 1 x\n2 2 3\n"},
    "train.txt:2: non-integer item id 'x'",
  ),
  "item beyond item_list": (
    {"train.txt": "0 0 1\n1 1 7\n2 2 3\n"},
    "train.txt:2: item id 7 out of range",
  ),
  "user without a line": (
    {"train.txt": "0 0 1\n2 2 3\n", "test.txt": "0 2\n2 0\n"},
    "train.txt: user 1 has no training items",
  ),
  "blank line inside": ({"test.txt": "0 2\n\n2 0\n"}, "test.txt:2: empty line inside the file"),
  "test item in train": (
    {"test.txt": "0 1\n1 3\n2 0\n"},
    "test.txt:1: user 0: item 1 is both a training item and a test item",
  ),
  "item is not its entity": (
    {"entity_list.txt": "org_id remap_id\ni1 0\ni0 1\ni2 2\ni3 3\ne4 4\n"},
    "item_list.txt:2: item 0 (http://x.org/A / i0) is not entity 0",
  ),
  "kg entity out of range": (
    {"kg_final.txt": "0 0 4\n1 0 9\n"},
    "kg_final.txt:2: entity id 9 out of range",
  ),
}


def _write(root: Path, **replace) -> Path:
  d = root / "mini"
  d.mkdir(parents=True, exist_ok=True)
  for name, text in {**GOOD, **replace}.items():
    (d / name).write_text(text)
  return d


def _trainer_error(d: Path) -> str:
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    with pytest.raises(files.DataFormatError) as e:
      dataset_lib.load_dataset(str(d.parent), d.name)
  return str(e.value)


def _llm_config(d: Path):
  c = llm_base.base_config()
  c.data_dir, c.dataset, c.prompt.domain, c.model.served_name = str(d.parent), d.name, "books", "m"
  return c


def test_good_dataset_reads_alike(tmp_path):
  d = _write(tmp_path / "data")
  history, held = generate.prompt_history(_llm_config(d))
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    ds = dataset_lib.load_dataset(str(d.parent), d.name, selection="valid", seed=2024)
  fit, valid = {}, {}
  for pairs, out in ((ds.train, fit), (ds.valid, valid)):
    for u, i in pairs.tolist():
      out.setdefault(u, []).append(i)
  assert history == fit and {u: v for u, v in held.items() if v} == valid
  assert structure.dataset_bounds(d) == (3, 5)


@pytest.mark.parametrize("case", sorted(BAD))
def test_inference_refuses_what_the_trainer_refuses_with_its_message(tmp_path, case):
  replace, want = BAD[case]
  d = _write(tmp_path / "data", **replace)
  message = _trainer_error(d)
  assert want in message and message.startswith(str(d)) and "\n" not in message
  with pytest.raises(files.DataFormatError) as e:
    generate.prompt_history(_llm_config(d))
  assert str(e.value) == message
  with pytest.raises(files.DataFormatError) as e:
    structure.max_entity_id(d)
  assert str(e.value) == message


def test_max_entity_id_counts_items_beyond_the_kg(tmp_path):
  """Without entity_list.txt the trainer's entity range covers every item, not only the KG's ids:
  interest ids from the largest KG id (the old rule) would collide with item ids."""
  d = _write(tmp_path / "data", **{"kg_final.txt": "0 0 1\n"})
  os.remove(d / "entity_list.txt")
  assert structure.max_entity_id(d) == 3


def _llm_swap():
  spec = importlib.util.spec_from_file_location(
    "llm_swap_errors", ROOT / "experiments" / "llm_swap.py"
  )
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


@pytest.mark.parametrize("text", ["0 6\n\n1 7\n", "0 6\n1 x\n", "0 6 1\n", "0 -6\n"])
def test_llm_swap_reads_interest_files_with_the_trainers_message(tmp_path, text):
  d = _write(tmp_path / "data")
  bad = tmp_path / "interests.txt"
  bad.write_text(text)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    with pytest.raises(files.DataFormatError) as trainer:
      dataset_lib.load_dataset(str(d.parent), d.name, interest_file=str(bad))
  llm_swap = _llm_swap()
  with pytest.raises(files.DataFormatError) as e:
    llm_swap.read_pairs(bad)
  assert str(e.value) == str(trainer.value)
  # a malformed generated file stops the study before any variant trains
  config = llm_base.base_config()  # any ConfigDict with the fields run() sets
  config.data_dir, config.interest_file = str(d.parent), ""
  config.model.use_interest_edges = True
  config.dataset = d.name
  trained = []
  with pytest.raises(files.DataFormatError, match="interests.txt:"):
    llm_swap.run(config, f"none,gen={bad}", str(tmp_path / "wd"), train_fn=trained.append)
  assert not trained


def _cli(*args):
  env = dict(
    os.environ,
    PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    JAX_PLATFORMS="cpu",
  )
  p = subprocess.run(
    [sys.executable, *args], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300
  )
  return p.returncode, p.stderr


def test_command_lines_print_the_trainers_one_line_error(tmp_path):
  d = _write(tmp_path / "data", **BAD["item beyond item_list"][0])
  want = f"error: {_trainer_error(d)}"
  runs = {
    "trainer": _cli(
      "-m",
      "cikg_jax.main",
      f"--workdir={tmp_path / 'run'}",
      "--config.dataset=mini",
      f"--config.data_dir={d.parent}",
      f"--config.synthetic_dir={tmp_path / 'syn'}",
    ),
    "generate": _cli(
      "-m",
      "inference.generate",
      "--config=configs/llm/smollm2_cpu.py",
      f"--config.data_dir={d.parent}",
      "--config.dataset=mini",
      f"--config.out_dir={tmp_path / 'gen'}",
      "--requests_only",
    ),
    "structure": _cli(
      "-m",
      "inference.structure",
      f"--run_dir={tmp_path / 'gen'}",
      f"--data_dir={d.parent}",
      "--dataset=mini",
    ),
  }
  for who, (rc, err) in runs.items():
    assert rc == 1 and err.strip().splitlines()[-1] == want and "Traceback" not in err, (who, err)
  assert not (tmp_path / "gen").exists()  # refused before the run directory was made

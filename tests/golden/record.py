"""Golden values: what short fixed-seed runs of the current code log, recorded so that a
restructuring (modules, train loop, step library) can show that it moved no number.

tests/test_golden.py reruns these cases and compares them with the committed golden_values.json;
it never writes that file. Regenerate it only when a change of the numerics is intended, and
commit the new JSON with that change (on CPU, one core, as recorded):

  CIKG_DATA_DIR=../shared/data taskset -c 1 python tests/golden/record.py
  ... record.py --cases tiny-paper tiny-release   # only these; the others stay as they are

Values are read only from what a run writes into its workdir (metrics.jsonl, results.json) by the
public entry point train.train_and_evaluate, so the cases survive any refactor behind it. The
train step's per-step losses are not observable there: each epoch's logged loss terms are the mean
over its steps (the first epoch's over the first steps), which is as sensitive to any change.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from typing import Any, Callable, Dict

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

import jax  # noqa: E402

from cikg_jax.training import train  # noqa: E402
from configs import dbbook2014, lightgcn, tiny  # noqa: E402

GOLDEN_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden_values.json")
RTOL, ATOL = 1e-5, 1e-7

# Wall time, machine and compile-cache facts: not numerics.
IGNORED_LINE_KEYS = ("train_seconds", "seconds")
# results.json's numbers: the best epoch's valid/test metrics and the test user groups.
RESULT_KEYS = (
  "best_epoch",
  "epochs_run",
  "n_params",
  "valid",
  "test",
  "test_groups",
  "test_groups_equal_interactions",
)


def _common(c, epochs: int):
  c.train.max_epochs = epochs
  c.train.plot = False
  c.train.checkpoint = False  # no I/O; checkpoints change no number
  return c


def _tiny(views: str):
  c = tiny.get_config()
  c.views = views
  return _common(c, 3)


def _dbbook(views: str):
  c = dbbook2014.get_config()
  c.views = views
  return _common(c, 1)  # one epoch is ~45 BPR and ~40 TransE steps: ~15 s on one core


# name -> (config factory, needs the paper's data). The order is the order of the JSON.
CASES: Dict[str, tuple[Callable[[], Any], bool]] = {
  "tiny-paper": (lambda: _tiny("paper"), False),
  "tiny-release": (lambda: _tiny("release"), False),
  "tiny-lightgcn": (lambda: _common(lightgcn.get_config("synthetic"), 3), False),
  "dbbook2014-paper": (lambda: _dbbook("paper"), True),
  "dbbook2014-release": (lambda: _dbbook("release"), True),
  "dbbook2014-lightgcn": (lambda: _common(lightgcn.get_config("dbbook2014"), 1), True),
}


def config_for(name: str, data_dir: str = "", synthetic_dir: str = ""):
  c = CASES[name][0]()
  if data_dir:
    c.data_dir = data_dir
  if synthetic_dir:
    c.synthetic_dir = synthetic_dir
  return c


def flatten(tree, prefix: str = "") -> Dict[str, Any]:
  """{"results/test/recall@20": 0.41, ...}: one key per number, so a vanished or new metric
  shows up by name."""
  if isinstance(tree, dict):
    items = tree.items()
  elif isinstance(tree, (list, tuple)):
    items = enumerate(tree)
  else:
    return {prefix: tree}
  out = {}
  for k, v in items:
    out.update(flatten(v, f"{prefix}/{k}" if prefix else str(k)))
  return out


def observe(workdir: str) -> Dict[str, Any]:
  """Every number a finished run logged (timings aside), flattened."""
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    lines = [json.loads(x) for x in f if x.strip()]
  with open(os.path.join(workdir, "results.json")) as f:
    results = json.load(f)
  epochs = [{k: v for k, v in ln.items() if k not in IGNORED_LINE_KEYS} for ln in lines]
  return flatten({"epochs": epochs, "results": {k: results.get(k) for k in RESULT_KEYS}})


def run_case(name: str, workdir: str, data_dir: str = "", synthetic_dir: str = ""):
  """Trains case `name` into a fresh `workdir` and returns its flattened values."""
  train.train_and_evaluate(config_for(name, data_dir, synthetic_dir), workdir)
  return observe(workdir)


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument(
    "--cases",
    nargs="+",
    choices=list(CASES),
    default=list(CASES),
    help="record only these; the file keeps the other cases' values",
  )
  ap.add_argument("--data_dir", default="", help="the paper's datasets (default: $CIKG_DATA_DIR)")
  args = ap.parse_args(argv)
  old = {}
  if os.path.exists(GOLDEN_FILE):
    with open(GOLDEN_FILE) as f:
      old = json.load(f)["cases"]
  cases = dict(old)
  with tempfile.TemporaryDirectory() as tmp:
    for name in args.cases:
      print(f"== {name}", flush=True)
      cases[name] = run_case(
        name, os.path.join(tmp, name), args.data_dir, os.path.join(tmp, "synthetic")
      )
  golden = {
    "about": "tests/golden/record.py wrote this; tests/test_golden.py compares runs with it",
    "platform": jax.default_backend(),
    "jax": jax.__version__,
    "rtol": RTOL,
    "atol": ATOL,
    "cases": {n: cases[n] for n in CASES if n in cases},
  }
  with open(GOLDEN_FILE, "w") as f:
    json.dump(golden, f, indent=1)
    f.write("\n")
  print(f"wrote {GOLDEN_FILE}: {', '.join(golden['cases'])}")


if __name__ == "__main__":
  main()

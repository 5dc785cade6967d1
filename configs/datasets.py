"""A dataset name (as the CLI's `--config=configs/MODEL.py:NAME` passes it) -> that dataset's
CIKGRec config, which the baseline configs start from. A name without its own config file (your own
dataset) gets the base values (configs/base.py)."""

import importlib

MODULES = {
  "dbbook2014": "dbbook2014",
  "book-crossing": "book_crossing",
  "book_crossing": "book_crossing",
  "ml1m": "ml1m",
  "synthetic": "tiny",
}


def get_config(dataset: str):
  if dataset in MODULES:
    return importlib.import_module(f"configs.{MODULES[dataset]}").get_config()
  return importlib.import_module("configs.base").get_config(dataset)

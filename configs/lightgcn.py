"""LightGCN baseline: the user-item graph only, BPR only, with the dataset's release values.

  python -m cikg_jax.main --config=configs/lightgcn.py:dbbook2014 --workdir=runs/lightgcn-dbbook2014
  python -m cikg_jax.main --config=configs/lightgcn.py:mydata --workdir=runs/lightgcn-mydata

A name without its own config file (your own dataset) gets the base values (configs/base.py).
"""

import importlib

MODULES = {"dbbook2014": "dbbook2014", "book-crossing": "book_crossing",
           "book_crossing": "book_crossing", "ml1m": "ml1m", "synthetic": "tiny"}


def get_config(dataset: str = "dbbook2014"):
  if dataset in MODULES:
    c = importlib.import_module(f"configs.{MODULES[dataset]}").get_config()
  else:
    c = importlib.import_module("configs.base").get_config(dataset)
  c.model.use_kg_edges = False
  c.model.use_interest_edges = False
  c.uir.weight = 0.0
  c.cl.weight = 0.0
  c.kge.use = False
  return c

"""LightGCN baseline: the user-item graph only, BPR only, with the dataset's release values.

  python -m cikg_jax.main --config=configs/lightgcn.py:dbbook2014 --workdir=runs/lightgcn-dbbook2014
"""

import importlib


def get_config(dataset: str = "dbbook2014"):
  module = {"dbbook2014": "dbbook2014", "book-crossing": "book_crossing",
            "book_crossing": "book_crossing", "ml1m": "ml1m", "synthetic": "tiny"}[dataset]
  c = importlib.import_module(f"configs.{module}").get_config()
  c.model.use_kg_edges = False
  c.model.use_interest_edges = False
  c.uir.weight = 0.0
  c.cl.weight = 0.0
  c.kge.use = False
  return c

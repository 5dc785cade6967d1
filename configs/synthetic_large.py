"""CIKGRec on a generated power-law graph far larger than the paper's datasets (default 1M users,
200k items, 1M entities, ~50M edges; cikg_jax/data/synthetic_large.py), for the multi-device
modes and the scaling study. `scale` shrinks every count, for a quick look:

  python -m cikg_jax.main --config=configs/synthetic_large.py --workdir=runs/large
  python -m cikg_jax.main --config=configs/synthetic_large.py:0.001 --workdir=runs/large-small
"""

import ml_collections

from configs import base


def get_config(scale: str = "1.0"):
  s = float(scale)
  c = base.get_config()
  c.dataset = "synthetic_large"
  n = lambda x: max(10, int(x * s))
  c.synthetic_large = ml_collections.ConfigDict(
    dict(
      n_users=n(1_000_000),
      n_items=n(200_000),
      n_entities=n(1_000_000),
      n_interactions=n(30_000_000),
      n_kg_triples=n(15_000_000),
      n_relations=20,
      n_interests=n(20_000),
      n_user_interests=n(5_000_000),
      alpha=1.0,
      seed=0,
    )
  )
  c.train.max_epochs = 10
  c.train.min_epochs = 0
  c.eval.chunk_size = 4096
  return c

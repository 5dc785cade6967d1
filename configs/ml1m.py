"""CIKGRec on ML-1M with the release's hyper-parameters (docs/method.md §8). The shipped data lacks
kg_final.txt: without it the run has no KG edges (a warning says so).

  python -m cikg_jax.main --config=configs/ml1m.py --workdir=runs/ml1m
"""

from configs import base


def get_config():
  c = base.get_config()
  c.dataset = "ml1m"
  c.model.num_layers = 3
  c.model.edge_dropout = 0.1
  c.model.message_dropout = 0.1
  c.train.lr = 5e-4
  c.train.l2 = 5e-5
  c.train.cf_weight = 1.8
  c.cl.weight = 0.03
  c.uir.weight = 0.15
  c.uir.gamma = 3.0
  c.uir.replace_rate = 0.0
  c.uir.edge_drop = 0.0
  c.uir.p0, c.uir.pmax, c.uir.total_epoch = 0.10, 0.95, 80
  c.kge.use = False
  return c

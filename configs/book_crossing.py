"""CIKGRec on Book-Crossing with the release's hyper-parameters (docs/method.md §8).

python -m cikg_jax.main --config=configs/book_crossing.py --workdir=runs/book-crossing
"""

from configs import base


def get_config():
  c = base.get_config()
  c.dataset = "book-crossing"
  c.model.num_layers = 4
  c.model.edge_dropout = 0.1
  c.train.l2 = 5e-5
  c.cl.tau = 0.15
  c.uir.enc_layers = 3
  c.uir.replace_rate = 0.0
  c.uir.edge_drop = 0.0
  c.uir.p0, c.uir.pmax, c.uir.total_epoch = 0.05, 0.65, 120
  c.kge.use = False
  return c

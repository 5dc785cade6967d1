"""A tiny synthetic dataset the project generates itself: the smoke test and the default job
(about a minute on 2 CPU cores).

  python -m cikg_jax.main --workdir=runs/tiny
"""

from configs import base


def get_config():
  c = base.get_config()
  c.dataset = "synthetic"
  c.synthetic.n_users = 300
  c.synthetic.n_items = 200
  c.model.embed_dim = 32
  c.model.num_layers = 2
  c.train.lr = 5e-3
  c.train.batch_size = 256
  c.train.max_epochs = 30
  c.train.patience = 5
  c.train.min_epochs = 0
  c.uir.total_epoch = 30
  c.kge.batch_size = 256
  c.eval.chunk_size = 128
  return c

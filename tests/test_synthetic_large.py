"""The power-law generator of cikg_jax/data/synthetic_large.py: valid files the loader accepts,
every user in train and test, and Zipf-law degrees (rank-degree slope near -alpha)."""

import numpy as np

from cikg_jax.data import dataset, synthetic_large
from cikg_jax.training import train
from configs import synthetic_large as large_config


def _config(tmp_path, scale="0.002"):
  c = large_config.get_config(scale)
  c.synthetic_dir = str(tmp_path / "data")
  return c


def _slope(degrees, top=100):
  """Least-squares slope of log(degree) on log(rank) over the `top` highest degrees."""
  d = np.sort(degrees)[::-1][:top].astype(np.float64)
  ranks = np.arange(1, len(d) + 1)
  return float(np.polyfit(np.log(ranks), np.log(d), 1)[0])


def test_generated_dataset_loads_with_power_law_degrees(tmp_path):
  c = _config(tmp_path)
  ds = dataset.load_from_config(c)
  s = c.synthetic_large
  assert (ds.n_users, ds.n_items, ds.n_entities) == (s.n_users, s.n_items, s.n_entities)
  assert set(np.unique(ds.test[:, 0])) == set(range(ds.n_users))  # every user has a test item
  held = np.concatenate([ds.train, ds.valid])
  assert set(np.unique(held[:, 0])) == set(range(ds.n_users))
  assert len(ds.kg) > 0.9 * s.n_kg_triples and ds.n_interests > 0
  items = np.bincount(np.concatenate([held, ds.test])[:, 1], minlength=ds.n_items)
  assert -1.3 < _slope(items) < -0.7  # Zipf, alpha = 1
  tails = np.bincount(ds.kg[:, 2], minlength=ds.n_entities)
  assert -1.3 < _slope(tails) < -0.7
  users = np.bincount(held[:, 0], minlength=ds.n_users)
  assert users.max() > 20 * np.median(users)  # heavy-tailed activity


def test_same_parameters_give_the_same_files(tmp_path):
  a = synthetic_large.ensure(str(tmp_path / "a"), **dict(_config(tmp_path).synthetic_large))
  b = synthetic_large.ensure(str(tmp_path / "b"), **dict(_config(tmp_path).synthetic_large))
  for name in ("train.txt", "test.txt", "kg_final.txt", "user_interest_clustered.txt"):
    with open(f"{a}/synthetic_large/{name}") as fa, open(f"{b}/synthetic_large/{name}") as fb:
      assert fa.read() == fb.read()


def test_cikgrec_trains_one_epoch_on_it(tmp_path):
  c = _config(tmp_path, "0.0005")
  c.train.max_epochs, c.train.plot, c.train.checkpoint = 1, False, False
  c.train.batch_size = 512
  res = train.train_and_evaluate(c, str(tmp_path / "run"))
  assert res["epochs_run"] == 1 and 0.0 <= res["test"]["recall@20"] <= 1.0

"""The information-free interest controls keep what they promise to keep."""

import numpy as np
import pytest

from cikg_jax.data import interest_controls


def _edges(seed=0, n_users=50, nodes=range(100, 120), n=200):
  rng = np.random.default_rng(seed)
  e = np.stack([rng.integers(0, n_users, n), rng.choice(list(nodes), n)], axis=1)
  return np.unique(e, axis=0)


def test_shuffled_keeps_user_and_node_degrees_up_to_merged_duplicates():
  e = _edges()
  s = interest_controls.apply(e, 50, "shuffled", seed=3)
  assert len(s) >= 0.9 * len(e) and len(np.unique(s, axis=0)) == len(s)
  # before deduplication degrees are exactly kept; after it, each user loses at most its merges
  deg = lambda x, col, m: np.bincount(x[:, col], minlength=m)
  assert (deg(s, 0, 50) <= deg(e, 0, 50)).all()
  assert (deg(e, 0, 50) - deg(s, 0, 50)).sum() == len(e) - len(s)
  assert set(np.unique(s[:, 1])) <= set(np.unique(e[:, 1]))
  assert not np.array_equal(s, e)
  assert np.array_equal(s, interest_controls.apply(e, 50, "shuffled", seed=3))  # seeded


def test_random_keeps_edge_count_and_node_set():
  e = _edges(1)
  r = interest_controls.apply(e, 50, "random", seed=3)
  assert len(r) == len(e) and len(np.unique(r, axis=0)) == len(r)
  assert set(np.unique(r[:, 1])) <= set(np.unique(e[:, 1]))
  assert r[:, 0].max() < 50
  # no information: overlap with the real edges is what chance gives (~density), not more
  overlap = len(set(map(tuple, r)) & set(map(tuple, e))) / len(e)
  assert overlap < 0.4


def test_identity_and_bad_name():
  e = _edges()
  assert interest_controls.apply(e, 50, "", seed=0) is e
  with pytest.raises(ValueError, match="interest_control"):
    interest_controls.apply(e, 50, "permuted", seed=0)

"""config.train.split_step (steps.split_train_step): one program per loss part, each adding its
gradient into one donated buffer, then the update. Against the whole step on one device: the
terms are computed by the same operations in the same order, in other programs (equal to
float rounding), the gradient is summed part by part instead of inside one autodiff pass (equal to float
rounding); 2-epoch runs give the same metrics to float rounding. The graph modes' split step is
checked against one device in tests/test_parallel_modes.py."""

import jax
import numpy as np
import optax
import pytest

from cikg_jax.training import config_rules, steps, train
from configs import base, lightgcn, tiny


def _setup(tmp_path, **edits):
  c = tiny.get_config()
  c.synthetic_dir = str(tmp_path / "data")
  c.train.plot = False
  c.model.edge_dropout, c.model.message_dropout = 0.1, 0.1
  for k, v in edits.items():
    section, name = k.split("__")
    c[section][name] = v
  return steps.setup(c)


def _batch(ds, n=256, real=200):
  rng = np.random.default_rng(0)
  return {
    "users": rng.integers(ds.n_users, size=n).astype(np.int32),
    "pos": rng.integers(ds.n_items, size=n).astype(np.int32),
    "neg": rng.integers(ds.n_items, size=n).astype(np.int32),
    "mask": (np.arange(n) < real).astype(np.float32),
  }


def _leaves(tree):
  return [np.asarray(x, np.float64) for x in jax.tree_util.tree_leaves(tree)]


@pytest.mark.parametrize("edits", [{}, {"cl__chunk": 50, "model__remat": True}])
def test_split_step_equals_the_whole_step(tmp_path, edits):
  ds, c, net, graphs = _setup(tmp_path, **edits)
  assert steps.loss_parts(net) == ("rec", "cl", "uir")
  tx, kge_tx = optax.sgd(1.0), steps.make_optimizers(c)[1]  # SGD at lr 1: the change is -grad
  s0 = steps.create_train_state(jax.random.PRNGKey(0), net, tx, kge_tx, c.kge.use)
  schedule = steps.epoch_schedule(np.full(2, 0.4, np.float32), 1)
  batch, key = _batch(ds), jax.random.PRNGKey(3)
  whole, terms = jax.jit(steps.make_train_step(net, tx, schedule))(s0, batch, key, graphs)
  split, split_terms = steps.make_split_train_step(net, tx, schedule)(
    jax.tree_util.tree_map(lambda x: x.copy(), s0), batch, key, graphs
  )
  assert set(split_terms) == set(terms)
  for k, v in terms.items():
    assert float(split_terms[k]) == pytest.approx(float(v), rel=1e-6, abs=1e-12), k
  change = [a - b for a, b in zip(_leaves(whole.params), _leaves(s0.params))]
  split_change = [a - b for a, b in zip(_leaves(split.params), _leaves(s0.params))]
  largest = max(float(np.max(np.abs(x))) for x in change)
  assert largest > 1e-3
  diff = max(float(np.max(np.abs(a - b))) for a, b in zip(split_change, change))
  assert diff <= 1e-5 * largest, (diff, largest)
  assert int(split.step) == int(whole.step) == 1


def test_a_wrong_part_changes_the_gradient(tmp_path):
  """The comparison above can fail: leaving out the reconstruction part moves the gradient."""
  ds, c, net, graphs = _setup(tmp_path)
  tx, kge_tx = optax.sgd(1.0), steps.make_optimizers(c)[1]
  s0 = steps.create_train_state(jax.random.PRNGKey(0), net, tx, kge_tx, c.kge.use)
  schedule = steps.epoch_schedule(np.full(2, 0.4, np.float32), 1)
  batch, key = _batch(ds), jax.random.PRNGKey(3)
  whole, _ = jax.jit(steps.make_train_step(net, tx, schedule))(s0, batch, key, graphs)
  parts = [
    jax.jit(
      lambda s, b, k, g, acc=None, p=p: steps.gradient_part_step(
        net, schedule, None, p, s, b, k, g, acc
      )
    )
    for p in ("rec", "cl")
  ]
  update = jax.jit(lambda s, g: steps.apply_gradients(tx, s, g))
  partial, _ = steps.split_train_step(parts, update)(s0, batch, key, graphs)
  diff = max(
    float(np.max(np.abs(a - b))) for a, b in zip(_leaves(partial.params), _leaves(whole.params))
  )
  assert diff > 1e-4


def test_two_epochs_with_the_split_step_match_the_whole_step(tmp_path):
  def run(name, split):
    c = tiny.get_config()
    c.synthetic_dir = str(tmp_path / "data")
    c.train.plot = False
    c.train.max_epochs = 2
    c.train.split_step = split
    return train.train_and_evaluate(c, str(tmp_path / name))

  whole, split = run("whole", False), run("split", True)
  assert split["train_step_compilations"] == whole["train_step_compilations"] == 1
  for split_name in ("valid", "test"):
    for k, v in whole[split_name].items():
      assert split[split_name][k] == pytest.approx(v, abs=2e-3), (split_name, k)


def test_split_step_is_refused_where_it_cannot_run(tmp_path):
  c = lightgcn.get_config("synthetic")
  c.train.split_step = True
  with pytest.raises(config_rules.ConfigError, match="train.split_step"):
    config_rules.check(c)
  c = base.get_config()
  c.train.split_step = True
  config_rules.check(c)  # CIKGRec: accepted

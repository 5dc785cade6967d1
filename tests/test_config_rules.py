"""Every config value a user can set is checked before anything is read, allocated or written."""

import os

import pytest

from cikg_jax.training import config_rules, train
from configs import base, kgat, simgcl, synthetic_large, tiny


@pytest.mark.parametrize(
  "make",
  [
    base.get_config,
    tiny.get_config,
    kgat.get_config,
    simgcl.get_config,
    synthetic_large.get_config,
  ],
)
def test_shipped_configs_pass(make):
  config_rules.check(make())


BAD = [
  ("train.batch_size", 0, "an integer >= 1"),
  ("train.batch_size", -5, "an integer >= 1"),
  ("model.embed_dim", 0, "an integer >= 1"),
  ("cl.tau", 0.0, "a finite number > 0"),
  ("eval.ks", (20,), r"one of eval.ks \(20,\)"),
  ("eval.select_k", 7, r"one of eval.ks"),
  ("eval.ks", ("abc",), "a non-empty tuple of integers"),
  ("train.max_epochs", 0, "an integer >= 1"),
  ("train.max_epochs", -3, "an integer >= 1"),
  ("model.num_layers", -1, "an integer >= 0"),
  ("valid_fraction", 1.5, "> 0 and < 1"),
  ("train.lr", float("nan"), "a finite number > 0"),
  ("selection", "tset", "one of 'valid', 'test'"),
  ("uir.schedule", "cos", "one of 'exp'"),
  ("model.edge_dropout", 1.0, ">= 0 and < 1"),
]


@pytest.mark.parametrize("key,value,must", BAD, ids=[f"{k}={v}" for k, v, _ in BAD])
def test_a_bad_value_is_refused_naming_its_key_before_the_workdir_is_made(
  tmp_path, key, value, must
):
  c = tiny.get_config()
  c.synthetic_dir = str(tmp_path / "data")
  group, _, name = key.rpartition(".")
  with c.unlocked():
    setattr(c[group] if group else c, name, value)
  workdir = tmp_path / "run"
  with pytest.raises(config_rules.ConfigError, match=rf"^config\.\S+=.*: must be .*{must}") as e:
    train.train_and_evaluate(c, str(workdir))
  assert "\n" not in str(e.value) and key.split(".")[-1] in str(e.value)
  assert not workdir.exists() and not os.path.exists(c.synthetic_dir)


def test_a_node_table_beyond_the_machines_memory_is_refused_before_allocation():
  import types

  from cikg_jax.training import steps

  ds = types.SimpleNamespace(
    path="/data/big", n_users=10**6, n_entities=4 * 10**6, n_interests=0, n_nodes=5 * 10**6
  )
  c = tiny.get_config()
  steps.check_table_size(ds, c, memory_bytes=2**40)  # 5M x 32 x 4 B x 6 = 3.6 GiB: fits 1 TiB
  with pytest.raises(ValueError, match=r"/data/big: the node table .* 5,000,000 rows x model"):
    steps.check_table_size(ds, c, memory_bytes=2**30)

"""One seed, one run: two trainings of the same config on the CPU give identical logs and results
(every value but wall-clock times), and the GPU's deterministic mode is requested where a GPU is."""

import copy
import json
import os

from cikg_jax import runtime
from cikg_jax.training import train
from configs import tiny


def _strip(record):
  return {k: v for k, v in record.items() if "seconds" not in k}


def test_two_runs_of_one_seed_are_identical(tmp_path):
  c = tiny.get_config()
  c.synthetic_dir = str(tmp_path / "data")
  c.train.max_epochs, c.train.plot = 3, False
  for name in ("a", "b"):
    train.train_and_evaluate(copy.deepcopy(c), str(tmp_path / name))
  read = lambda d: [_strip(json.loads(x)) for x in open(tmp_path / d / "metrics.jsonl")]
  assert read("a") == read("b") and len(read("a")) == 3
  res = lambda d: _strip(json.load(open(tmp_path / d / "results.json")))
  assert res("a") == res("b")


def test_gpu_deterministic_flag_only_where_a_gpu_is(monkeypatch):
  monkeypatch.setenv("XLA_FLAGS", "--xla_foo=1")
  monkeypatch.setattr(runtime, "nvidia_gpu_visible", lambda: False)
  assert runtime.set_xla_gpu_deterministic(True) == "--xla_foo=1"
  monkeypatch.setattr(runtime, "nvidia_gpu_visible", lambda: True)
  assert runtime.set_xla_gpu_deterministic(False) == "--xla_foo=1"
  assert os.environ["XLA_FLAGS"] == "--xla_foo=1"
  runtime.set_xla_gpu_deterministic(True)
  assert os.environ["XLA_FLAGS"] == "--xla_foo=1 --xla_gpu_deterministic_ops=true"
  monkeypatch.setenv("XLA_FLAGS", "--xla_gpu_deterministic_ops=false")  # the user's choice wins
  assert runtime.set_xla_gpu_deterministic(True) == "--xla_gpu_deterministic_ops=false"


def test_auto_backend_is_the_csr_product_on_a_gpu_in_deterministic_mode(monkeypatch):
  from cikg_jax.graphs import propagation

  monkeypatch.setattr(propagation.jax, "default_backend", lambda: "gpu")
  monkeypatch.setenv("XLA_FLAGS", "--xla_foo=1")
  assert not runtime.xla_gpu_deterministic_requested()
  assert propagation.resolve_backend("auto") == "segment"
  monkeypatch.setenv("XLA_FLAGS", "--xla_foo=1 --xla_gpu_deterministic_ops=true")
  assert runtime.xla_gpu_deterministic_requested()
  assert propagation.resolve_backend("auto") == "bcsr"
  assert propagation.resolve_backend("segment") == "segment"  # an explicit choice stands
  monkeypatch.setenv("XLA_FLAGS", "--xla_gpu_deterministic_ops=false")
  assert propagation.resolve_backend("auto") == "segment"
  monkeypatch.setattr(propagation.jax, "default_backend", lambda: "cpu")
  assert propagation.resolve_backend("auto") == "bcsr"

"""Every config value a user can set, checked in one place before anything is allocated or written.

A batch size of 0 or a temperature of 0 would otherwise surface deep inside training as a
ZeroDivisionError, and a `select_k` missing from `eval.ks` as a KeyError after the first epoch;
a negative layer count or a validation fraction above 1 would train something else than asked.
`check` raises ConfigError naming the first bad key, its value and the rule, in one line."""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, Optional, Tuple

from cikg_jax.training import config_migration, schedules


class ConfigError(ValueError):
  """A config value out of its type or range; the message names the key."""


Rule = Callable[[Any], Optional[str]]  # None if the value is fine, else what it must be


def _int(lo: int, hi: Optional[int] = None) -> Rule:
  def rule(v):
    if isinstance(v, bool) or not isinstance(v, int) or v < lo or (hi is not None and v > hi):
      return f"an integer >= {lo}" + (f" and <= {hi}" if hi is not None else "")
    return None

  return rule


def _num(lo: float, hi: float = math.inf, lo_open: bool = False, hi_open: bool = False) -> Rule:
  def rule(v):
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    ok = ok and (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
    if ok:
      return None
    left = f"> {lo:g}" if lo_open else f">= {lo:g}"
    right = "" if hi == math.inf else f" and {'<' if hi_open else '<='} {hi:g}"
    return f"a finite number {left}{right}"

  return rule


def _one_of(*choices) -> Rule:
  return lambda v: None if v in choices else f"one of {', '.join(repr(c) for c in choices)}"


def _bool(v) -> Optional[str]:
  return None if isinstance(v, bool) else "True or False"


def _str(v) -> Optional[str]:
  return None if isinstance(v, str) else "a string"


def _name(v) -> Optional[str]:
  return None if isinstance(v, str) and v.strip() else "a non-empty name"


def _ints(v) -> Optional[str]:
  ok = isinstance(v, (tuple, list)) and len(v) > 0
  ok = ok and all(isinstance(x, int) and not isinstance(x, bool) and x >= 1 for x in v)
  return None if ok else "a non-empty tuple of integers >= 1, e.g. '(20, 50)'"


POSITIVE, COUNT, SEED = _int(1), _int(0), _int(0)
RATE, PROBABILITY = _num(0.0, 1.0, hi_open=True), _num(0.0, 1.0)
WEIGHT, POSITIVE_NUMBER = _num(0.0), _num(0.0, lo_open=True)


def _model_names() -> Tuple[str, ...]:
  from cikg_jax.training import steps  # the model zoo; imported late (it pulls in JAX)

  return steps.NAMES


# key -> rule. Keys a config does not have are skipped (configs written before them).
RULES: Dict[str, Rule] = {
  "dataset": _name,
  "data_dir": _str,
  "interest_file": _str,
  "interest_control": _one_of("", "shuffled", "random"),
  "synthetic_dir": _str,
  "synthetic.n_users": _int(4),
  "synthetic.n_items": _int(4),
  "synthetic.seed": SEED,
  "selection": _one_of("valid", "test"),
  "valid_fraction": _num(0.0, 1.0, lo_open=True, hi_open=True),
  "split_seed": _int(-1),
  "views": _one_of("paper", "release"),
  "seed": SEED,
  "model.name": lambda v: _one_of(*_model_names())(v),
  "model.embed_dim": POSITIVE,
  "model.num_layers": COUNT,  # 0: no propagation (LightGCN with none is BPR-MF)
  "model.add_self_loops": _bool,
  "model.use_kg_edges": _bool,
  "model.use_interest_edges": _bool,
  "model.edge_dropout": RATE,
  "model.message_dropout": RATE,
  "model.backend": _one_of("auto", "bcsr", "segment"),
  "model.remat": _bool,
  "train.lr": POSITIVE_NUMBER,
  "train.batch_size": POSITIVE,
  "train.cf_sampling": _one_of("interactions", "users"),
  "train.max_epochs": POSITIVE,
  "train.patience": POSITIVE,
  "train.min_epochs": COUNT,
  "train.cf_weight": WEIGHT,
  "train.l2": WEIGHT,
  "train.max_seconds": WEIGHT,
  "train.checkpoint": _bool,
  "train.checkpoint_every_seconds": WEIGHT,
  "train.resume": _bool,
  "train.plot": _bool,
  "train.deterministic": _bool,
  "train.split_step": _bool,
  "train.num_devices": COUNT,  # the old place of parallel.num_devices
  "parallel.mode": _one_of("data", "graph", "data_graph"),
  "parallel.num_devices": COUNT,
  "parallel.data_devices": COUNT,
  "parallel.exchange": _one_of("all_gather", "halo", "auto", "ring", "halo_rounds"),
  "parallel.node_order": _one_of("identity", "balanced", "rcm", "degree"),
  "parallel.coordinator_address": _str,
  "parallel.num_processes": COUNT,
  "parallel.process_id": _int(-1),
  "uir.weight": WEIGHT,
  "uir.enc_layers": POSITIVE,
  "uir.dec_layers": POSITIVE,
  "uir.replace_rate": PROBABILITY,
  "uir.edge_drop": RATE,
  "uir.gamma": POSITIVE_NUMBER,
  "uir.schedule": _one_of(*schedules.SCHEDULES),
  "uir.p0": PROBABILITY,
  "uir.pmax": PROBABILITY,
  "uir.total_epoch": POSITIVE,
  "cl.weight": WEIGHT,
  "cl.tau": POSITIVE_NUMBER,
  "cl.eps": WEIGHT,
  "cl.chunk": COUNT,
  "kge.use": _bool,
  "kge.lr": POSITIVE_NUMBER,
  "kge.l2": WEIGHT,
  "kge.batch_size": POSITIVE,
  "eval.ks": _ints,
  "eval.chunk_size": POSITIVE,
  "eval.select_k": POSITIVE,
  "eval.n_groups": POSITIVE,
  "simgcl.weight": WEIGHT,
  "simgcl.tau": POSITIVE_NUMBER,
  "simgcl.eps": WEIGHT,
  "kgat.layers": _ints,
  "kgat.mess_dropout": RATE,
  "kgat.negative_slope": WEIGHT,
  "kgat.relation_dim": POSITIVE,
  "kgat.pretrain": _str,
  "synthetic_large.n_users": POSITIVE,
  "synthetic_large.n_items": POSITIVE,
  "synthetic_large.n_entities": POSITIVE,
  "synthetic_large.n_relations": POSITIVE,
  "synthetic_large.n_interests": POSITIVE,
  "synthetic_large.n_interactions": POSITIVE,
  "synthetic_large.n_kg_triples": POSITIVE,
  "synthetic_large.n_user_interests": POSITIVE,
  "synthetic_large.alpha": POSITIVE_NUMBER,
  "synthetic_large.seed": SEED,
}


def _fail(key: str, value: Any, must: str) -> None:
  shown = repr(value)
  shown = shown if len(shown) <= 60 else shown[:57] + "..."
  raise ConfigError(f"config.{key}={shown}: must be {must} (--config.{key}=...)")


def check(config) -> None:
  """Raises ConfigError on the first value out of its rule, then on cross-field rules."""
  flat = config_migration.flatten(config.to_dict() if hasattr(config, "to_dict") else dict(config))
  for key, rule in RULES.items():
    if key in flat:
      must = rule(flat[key])
      if must is not None:
        _fail(key, flat[key], must)
  ks, select_k = flat.get("eval.ks"), flat.get("eval.select_k")
  if ks is not None and select_k is not None and select_k not in ks:
    _fail("eval.select_k", select_k, f"one of eval.ks {tuple(ks)} (early stopping reads it)")
  p0, pmax = flat.get("uir.p0"), flat.get("uir.pmax")
  if p0 is not None and pmax is not None and p0 > pmax:
    _fail("uir.p0", p0, f"<= uir.pmax ({pmax})")
  if p0 == 0 and flat.get("uir.schedule") == "exp":
    _fail("uir.p0", p0, "> 0 under uir.schedule='exp' (it grows p0 geometrically)")
  if flat.get("train.split_step") and flat.get("model.name", "cikgrec") != "cikgrec":
    _fail("train.split_step", True, "False for model.name other than 'cikgrec' (one loss part)")
  n, pid = flat.get("parallel.num_processes"), flat.get("parallel.process_id")
  if n and pid is not None and pid >= n:
    _fail("parallel.process_id", pid, f"-1 or below parallel.num_processes ({n})")

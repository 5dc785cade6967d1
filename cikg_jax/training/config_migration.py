"""Configs written under older key names read as today's: a key that moved is renamed, a key added
since is filled with the value that reproduces the runs from before it.

A run directory's stored identity and a config loaded from an older file are both compared and
unpacked under today's names (`canonical`), so renaming or adding a key never makes an old run
look like another one, nor an old config train something else."""

from __future__ import annotations

from typing import Any, Dict, Mapping

# Keys added to the config after runs were first written, with the value that reproduces the runs
# from before them: a stored config without such a key reads as if it held that value.
ADDED_KEYS = {
  "parallel.mode": "data",
  "parallel.num_devices": 1,
  "parallel.data_devices": 0,
  "cl.chunk": 0,
  "parallel.exchange": "all_gather",
  "parallel.node_order": "identity",
  "train.split_step": False,
  "train.cf_sampling": "interactions",
}
# Keys that moved (old name -> new name): a config holding the old one reads under the new name.
MOVED_KEYS = {"train.num_devices": "parallel.num_devices"}


def flatten(d: Mapping, prefix: str = "") -> Dict[str, Any]:
  """A nested dict as {"section.key": value} (empty sections have no keys)."""
  out = {}
  for k, v in d.items():
    if isinstance(v, Mapping):
      out.update(flatten(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def canonical(flat: Mapping[str, Any]) -> Dict[str, Any]:
  """A flat config under today's key names: moved keys renamed (the old value counts where the new
  key is absent or at its default; both set to different non-defaults is a conflict
  parallel.settings reports), added keys absent from it filled with their defaults."""
  out = dict(flat)
  for old, new in MOVED_KEYS.items():
    if old in out:
      value = out.pop(old)
      if out.get(new, ADDED_KEYS.get(new)) == ADDED_KEYS.get(new):
        out[new] = value
  for key, value in ADDED_KEYS.items():
    out.setdefault(key, value)
  return out

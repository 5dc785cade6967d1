"""Bytes a device receives per call of a compiled, SPMD-partitioned XLA program, read from its
optimised HLO text: every collective (all-gather, all-to-all, all-reduce, reduce-scatter,
collective-permute) counted with the trip counts of the while loops around it.

Per collective, with G devices in its replica group and S the bytes of its per-device result:
all-gather and all-to-all receive S (G-1)/G (the other devices' parts), reduce-scatter
S (G-1) (one part from each other device), a ring all-reduce 2 S (G-1)/G, collective-permute S.
These are the bytes over the links, not their timing; a loop with no known trip count is counted
once and reported in `unknown_trip_counts`; a conditional runs one of its branches, and the one
that receives most is counted.
"""

from __future__ import annotations

from collections import defaultdict
import re
from typing import Dict, List, Tuple

KINDS = ("all-gather", "all-to-all", "all-reduce", "reduce-scatter", "collective-permute")
DTYPE_BYTES = {
  "pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2,
  "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8,
}  # fmt: skip
_COMPUTATION = re.compile(r"^(?:ENTRY )?%(\S+) \(.*\{\s*$")
_SHAPE = re.compile(r"\b([a-z]+\d*)\[([\d,]*)\]")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%\S+ = (.+?) (" + "|".join(KINDS) + r")(?:-start)?\(")
_CALLEE = re.compile(r"\b(body|calls|to_apply|condition)=%([\w.\-]+)")
_BRANCHES = re.compile(r"branch_computations=\{([^}]*)\}")
_TRIP = re.compile(r'"known_trip_count":\{"n":"(\d+)"\}')


def shape_bytes(text: str) -> int:
  """Bytes of an HLO shape, a tuple's summed: 'f32[8,4]{1,0}' -> 128."""
  total = 0
  for dtype, dims in _SHAPE.findall(text):
    if dtype not in DTYPE_BYTES:
      continue
    n = 1
    for d in filter(None, dims.split(",")):
      n *= int(d)
    total += n * DTYPE_BYTES[dtype]
  return total


def group_size(line: str, n_devices: int) -> int:
  """Devices per replica group: {{0,1,2,3},{4,...}} or the iota form [groups,size]<=[n]."""
  m = re.search(r"replica_groups=\{\{([\d,]*)\}", line)
  if m:
    return len(m.group(1).split(","))
  m = re.search(r"replica_groups=\[(\d+),(\d+)\]<=", line)
  if m:
    return int(m.group(2))
  m = re.search(r"source_target_pairs=\{", line)
  return 2 if m else n_devices


def received_bytes(kind: str, result_bytes: int, g: int) -> float:
  if g <= 1:
    return 0.0
  if kind in ("all-gather", "all-to-all"):
    return result_bytes * (g - 1) / g
  if kind == "reduce-scatter":
    return result_bytes * (g - 1)
  if kind == "all-reduce":
    return 2 * result_bytes * (g - 1) / g
  return float(result_bytes)  # collective-permute


def _parse(hlo: str):
  """({computation: [(kind, result bytes, group size)]}, {computation: [(callee, factor)]},
  entry name, loops without a known trip count)."""
  collectives: Dict[str, List[Tuple[str, int, str]]] = defaultdict(list)
  # (callee, factor), or (tuple of branch computations, 1) for a conditional
  calls: Dict[str, List[Tuple[object, int]]] = defaultdict(list)
  entry, current, unknown = None, None, 0
  for line in hlo.splitlines():
    m = _COMPUTATION.match(line)
    if m:
      current = m.group(1)
      if line.startswith("ENTRY"):
        entry = current
      continue
    if current is None:
      continue
    inst = _INSTRUCTION.match(line)
    if inst and "-done(" not in line:
      collectives[current].append((inst.group(2), shape_bytes(inst.group(1)), line))
    trip = 1
    if " while(" in line:
      t = _TRIP.search(line)
      trip = int(t.group(1)) if t else 1
      unknown += t is None
    for role, callee in _CALLEE.findall(line):
      calls[current].append((callee, trip if role in ("body", "condition") else 1))
    b = _BRANCHES.search(line)
    if b:
      calls[current].append((tuple(re.findall(r"%([\w.\-]+)", b.group(1))), 1))
  return collectives, calls, entry, unknown


def traffic(hlo: str, n_devices: int) -> Dict[str, object]:
  """{"received_bytes": per device per call, "by_kind": {kind: bytes}, "count": {kind: calls},
  "unknown_trip_counts": loops counted once}."""
  collectives, calls, entry, unknown = _parse(hlo)
  if entry is None:
    raise ValueError("no ENTRY computation in the HLO text")

  def cost(name: str, path: Tuple[str, ...]):
    """(bytes by kind, calls by kind) of one execution of computation `name`."""
    by_kind: Dict[str, float] = defaultdict(float)
    count: Dict[str, int] = defaultdict(int)
    if name in path:  # HLO has no recursion; guard against a misparse
      return by_kind, count
    for kind, size, line in collectives.get(name, ()):
      by_kind[kind] += received_bytes(kind, size, group_size(line, n_devices))
      count[kind] += 1
    for callee, k in calls.get(name, ()):
      if isinstance(callee, tuple):  # a conditional: the branch that receives most
        costs = [cost(c, path + (name,)) for c in callee] or [({}, {})]
        sub_bytes, sub_count = max(costs, key=lambda c: sum(c[0].values()))
      else:
        sub_bytes, sub_count = cost(callee, path + (name,))
      for kind, v in sub_bytes.items():
        by_kind[kind] += k * v
      for kind, v in sub_count.items():
        count[kind] += k * v
    return by_kind, count

  by_kind, count = cost(entry, ())
  return {
    "received_bytes": float(sum(by_kind.values())),
    "by_kind": dict(by_kind),
    "count": dict(count),
    "unknown_trip_counts": unknown,
  }

"""Dynamic mask rate of the interest reconstruction (docs/method.md §4), t = 0-based epoch."""

from __future__ import annotations

SCHEDULES = ("exp", "lin", "const")


def mask_rate(epoch: int, schedule: str, p0: float, pmax: float, total_epoch: int) -> float:
  """exp: p0 * (pmax/p0)^(t/T); lin: p0 + t (pmax - p0) / T; const: p0; capped at pmax."""
  t, big_t = float(epoch), float(total_epoch)
  if schedule == "exp":
    p = p0 * (pmax / p0) ** (t / big_t)
  elif schedule == "lin":
    p = p0 + t * (pmax - p0) / big_t
  elif schedule == "const":
    p = p0
  else:
    raise ValueError(f"unknown mask-rate schedule {schedule!r}; choose from {SCHEDULES}")
  return min(p, pmax)

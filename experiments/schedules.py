"""Mask-rate schedules of the interest reconstruction: exp (the release's), lin and const, and a
small grid of initial and maximum rates for exp. One seed per point unless --seeds says more.

  python experiments/schedules.py --datasets dbbook2014,book-crossing --seeds 2024
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from experiments.runner import Run, main  # noqa: E402

BASE = ("--config.views=paper", "--config.selection=valid")
P0 = (0.05, 0.2)
PMAX = (0.5, 0.75, 0.9)


def runs(datasets, seeds):
  out = []
  for seed in seeds:
    for d in datasets:
      out.append(Run(d, "cikgrec-paper-valid", "cikgrec", BASE, seed))
      for sched in ("lin", "const"):
        out.append(
          Run(
            d, f"cikgrec-sched_{sched}", "cikgrec", BASE + (f"--config.uir.schedule={sched}",), seed
          )
        )
      for p0 in P0:
        for pmax in PMAX:
          out.append(
            Run(
              d,
              f"cikgrec-exp_p0_{p0}_pmax_{pmax}",
              "cikgrec",
              BASE + (f"--config.uir.p0={p0}", f"--config.uir.pmax={pmax}"),
              seed,
            )
          )
  return out


if __name__ == "__main__":
  main(["schedules"], doc=__doc__.replace("unless --seeds says more", ""))

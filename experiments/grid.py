"""Several studies as one queue, in priority order, for a machine that runs many at once (a GPU):
the run of one study that another also lists is trained once.

  python experiments/grid.py --studies user_knowledge,main_table,ablations --parallel 12 \\
      --seeds 2024,1,2 --machine h200 --deadline_seconds 480
  python experiments/grid.py --quick                      # every study's smoke runs

With --order=seed (default) every variant's first seed runs before any second seed, so a cut-off
grid still covers every variant; with --order=study the studies run in the given order, each in its
own order (e.g. all seeds of the user-side-knowledge study first).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from experiments import runner  # noqa: E402

STUDIES = ("user_knowledge", "main_table", "ablations", "schedules", "kappa")

if __name__ == "__main__":
  runner.main(STUDIES[:3], doc=__doc__)

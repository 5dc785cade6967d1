"""Several studies as one queue, in priority order, for a machine that runs many at once (a GPU):
the run of one study that another also lists is trained once.

  python experiments/grid.py --studies user_knowledge,main_table,ablations --parallel 12 \\
      --seeds 2024,1,2 --machine h200 --deadline-seconds 480
  python experiments/grid.py --quick                      # every study's smoke runs

With --order=seed (default) every variant's first seed runs before any second seed, so a cut-off
grid still covers every variant; with --order=study the studies run in the given order, each in its
own order (e.g. all seeds of the user-side-knowledge study first).
"""

import argparse
import importlib
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from experiments import runner  # noqa: E402

STUDIES = ("user_knowledge", "main_table", "ablations", "schedules", "kappa")


def study_runs(studies, datasets, seeds):
  out = []
  for s in studies:
    out += [(s, r) for r in importlib.import_module(f"experiments.{s}").runs(datasets, seeds)]
  return out


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--studies", default=",".join(STUDIES[:3]))
  p.add_argument("--datasets", default=",".join(runner.DATASETS))
  p.add_argument("--seeds", default=",".join(map(str, runner.SEEDS)))
  p.add_argument("--only", default="", help="comma-separated substrings of run names to keep")
  p.add_argument("--quick", action="store_true")
  p.add_argument("--list", action="store_true")
  p.add_argument("--parallel", type=int, default=1)
  p.add_argument("--machine", default="")
  p.add_argument("--results-dir", default="")
  p.add_argument("--runs-dir", default=os.path.join(runner.ROOT, "runs"))
  p.add_argument("--deadline-seconds", type=float, default=0.0,
                 help="wall-time budget of the whole grid: runs get what is left")
  p.add_argument("--min-run-seconds", type=float, default=30.0,
                 help="start no run with less than this left before the deadline")
  p.add_argument("--extra", default="")
  p.add_argument("--order", choices=("seed", "study"), default="seed",
                 help="seed: every run's first seed first; study: the studies in the given order")
  args = p.parse_args(argv)
  pairs = study_runs(args.studies.split(","), args.datasets.split(","),
                     [int(s) for s in args.seeds.split(",")])
  if args.only:
    pairs = [(s, r) for s, r in pairs if any(k in r.name for k in args.only.split(","))]
  results_dir = args.results_dir or runner.RESULTS
  if args.quick:
    pairs = [(s, r) for s in dict.fromkeys(s for s, _ in pairs)
             for r in runner.quick([r for s2, r in pairs if s2 == s])]
    results_dir = args.results_dir or os.path.join(args.runs_dir, "quick", "results")
  seeds = {r.seed for _, r in pairs}
  order = sorted(seeds, key=[int(s) for s in args.seeds.split(",")].index) if not args.quick else [2024]
  if args.order == "seed":
    pairs = sorted(pairs, key=lambda sr: order.index(sr[1].seed))  # stable: study order kept
  if args.list:
    for s, r in pairs:
      print(f"{'done' if runner.find_result(r, results_dir) else 'todo'}  {s}  {r.name}")
    return {}
  if "kappa" in {s for s, _ in pairs} and not args.quick:
    from experiments import kappa  # its interest files are made from the committed answers
    kappa.prepare(args.datasets.split(","), os.environ.get("CIKG_DATA_DIR")
                  or os.path.join(runner.ROOT, "..", "shared", "data"))
  deadline = time.time() + args.deadline_seconds if args.deadline_seconds else 0.0
  return runner.run_grid(pairs, results_dir=results_dir, runs_dir=args.runs_dir,
                         parallel=args.parallel, machine=args.machine, extra=args.extra.split(),
                         deadline=deadline, min_run_seconds=args.min_run_seconds)


if __name__ == "__main__":
  main()

"""Main table from tuned configurations: CIKGRec, LightGCN, SimGCL and KGAT each with the best
configuration of its tuning study (experiments/tune.py: the same number of trials per model,
selected on validation only), five seeds, the epoch selected on validation.

  python experiments/tuned_table.py --datasets dbbook2014,book-crossing --seeds 2024,1,2,3,4
  python experiments/tuned_table.py --list      # the runs, their state and commands

A model enters a dataset's table once its study has tune.TRIALS counted trials (until then it is
left out, and said so in the log); the configurations are read from
experiments/results/tuning/best.json (`tune.py --report` writes it from the journals). A run's variant names its configuration,
`<model>-tuned<id>-valid` with id = tune.params_id of the parameters, so a study that later finds a
better configuration makes new runs instead of mixing two configurations under one name. KGAT's
configurations with pretraining load the tuner's BPR-MF run (tune.pretrain_run: seed 2024 on the
fitting split, which every seed shares), trained first if it is missing.
"""

import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from experiments import tune  # noqa: E402
from experiments.runner import Run, main  # noqa: E402

SEEDS = (2024, 1, 2, 3, 4)
MODELS = ("cikgrec", "lightgcn", "simgcl", "kgat")  # CIKGRec first, as the tables list it
logger = logging.getLogger("cikg_jax.experiments.tuned_table")


def tuned_configs(datasets, log=logger.info):
  """{(dataset, model): best parameters} of the finished studies."""
  out = {}
  for d in datasets:
    for m in MODELS:
      params = tune.tuned(d, m)
      if params is None:
        log(f"[tuned_table] {d} {m}: tuning study not finished; left out")
      else:
        out[d, m] = params
  return out


def runs(datasets, seeds):
  configs = tuned_configs(datasets)
  out = []
  for seed in seeds:
    for d in datasets:
      for m in MODELS:
        if (d, m) not in configs:
          continue
        params = configs[d, m]
        flags = tune.config_flags(m, params, tune.pretrain_dir(d))
        variant = f"{m}-tuned{tune.params_id(params)}-valid"
        out.append(Run(d, variant, m, tuple(flags) + ("--config.selection=valid",), seed))
  return out


def prepare(datasets, data_dir):
  """The BPR-MF runs that tuned KGAT configurations with pretraining start from."""
  del data_dir
  for (d, _), params in tuned_configs(datasets, log=lambda _: None).items():
    if params.get("pretrain"):
      tune.train_pretrain_run(d)


if __name__ == "__main__":
  main(["tuned_table"], doc=__doc__, seeds=SEEDS)

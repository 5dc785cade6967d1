"""Kappa: how many interest clusters the generated phrases are grouped into. Re-structures the
committed leak-free SmolLM2-135M answers for dbbook2014 (experiments/results/
smollm2_leakfree_dbbook2014/answers.jsonl.gz) with several cluster counts and trains CIKGRec on each
interest file (one seed per point unless --seeds says more; validation selection).

  python experiments/kappa.py --datasets dbbook2014 --seeds 2024
"""

import gzip
import logging
import os
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from experiments.runner import ROOT, Run, main  # noqa: E402

log = logging.getLogger("cikg_jax.experiments.kappa")

KAPPAS = (100, 250, 550, 1000)
ANSWERS = {"dbbook2014": "experiments/results/smollm2_leakfree_dbbook2014/answers.jsonl.gz"}
BASE = ("--config.views=paper", "--config.selection=valid")


def interest_file(dataset: str, kappa: int) -> str:
  return f"runs/kappa/{dataset}/k{kappa}/user_interest_clustered.txt"


def prepare(datasets, data_dir: str) -> None:
  """Structures the answers once per (dataset, kappa) with inference.structure (TF-IDF, seeded)."""
  for d in datasets:
    if d not in ANSWERS:
      continue
    answers_dir = os.path.join(ROOT, "runs", "kappa", d, "answers")
    if not os.path.exists(os.path.join(answers_dir, "results.jsonl")):
      os.makedirs(answers_dir, exist_ok=True)
      with (
        gzip.open(os.path.join(ROOT, ANSWERS[d]), "rb") as src,
        open(os.path.join(answers_dir, "results.jsonl"), "wb") as dst,
      ):
        shutil.copyfileobj(src, dst)
    for k in KAPPAS:
      out = os.path.join(ROOT, os.path.dirname(interest_file(d, k)))
      if os.path.exists(os.path.join(out, "user_interest_clustered.txt")):
        continue
      subprocess.run(
        [
          sys.executable,
          "-m",
          "inference.structure",
          "--run_dir",
          answers_dir,
          "--dataset",
          d,
          "--data_dir",
          data_dir,
          "--kappa",
          str(k),
          "--out_dir",
          out,
        ],
        cwd=ROOT,
        check=True,
        stdout=subprocess.DEVNULL,
      )
      log.info("[kappa] structured %s with kappa %s -> %s", d, k, out)


def runs(datasets, seeds):
  return [
    Run(
      d,
      f"cikgrec-smollm2_kappa{k}",
      "cikgrec",
      BASE + (f"--config.interest_file={interest_file(d, k)}",),
      seed,
    )
    for seed in seeds
    for d in datasets
    if d in ANSWERS
    for k in KAPPAS
  ]


if __name__ == "__main__":
  main(["kappa"], doc=__doc__)

"""User-side knowledge: does CIKGRec gain from what the LLM says about users, or from having
interest nodes at all? Full CIKGRec with the shipped GPT-3.5 interests, without interest nodes,
with shuffled interests (each user keeps their number of interests, clusters random), with random
interest nodes (same node and edge counts), and with the leak-free SmolLM2-135M interests
(dbbook2014 only; experiments/results/smollm2_leakfree_dbbook2014/), and the shipped interests
without the interest reconstruction loss (the pair "interest nodes or none" with the reconstruction
off on both sides). Validation selection. The decisive contrasts (shipped interests, none, none
with the reconstruction off, shuffled) get five seeds, the other variants the first three:

  python experiments/user_knowledge.py --datasets dbbook2014,book-crossing
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from experiments.runner import Run, main  # noqa: E402

BASE = ("--config.views=paper", "--config.selection=valid")
GENERATED = {
  "dbbook2014": {"smollm2": "experiments/results/smollm2_leakfree_dbbook2014/interests.txt"}
}
VARIANTS = {
  "cikgrec-paper-valid": (),  # shipped GPT-3.5 interests: the main table's run
  "cikgrec-no_interest": ("--config.model.use_interest_edges=False",),
  # the shipped interests without the reconstruction loss: against no_interest (which cannot
  # reconstruct) it isolates the interest nodes themselves (the ablations' run of the same name)
  "cikgrec-no_uir": ("--config.uir.weight=0",),
  "cikgrec-shuffled_interest": ("--config.interest_control=shuffled",),
  "cikgrec-random_interest": ("--config.interest_control=random",),
}


SEEDS = (2024, 1, 2, 3, 4)
# the contrasts that decide the study's question, run for every seed; the rest for the runner's
# default three (2024, 1, 2)
DECISIVE = (
  "cikgrec-paper-valid",
  "cikgrec-no_interest",
  "cikgrec-no_uir",
  "cikgrec-shuffled_interest",
)


def runs(datasets, seeds):
  out = []
  for seed in seeds:
    every = seed in SEEDS[:3]
    for d in datasets:
      out += [
        Run(d, v, "cikgrec", BASE + f, seed) for v, f in VARIANTS.items() if every or v in DECISIVE
      ]
      if not every:
        continue
      for name, path in GENERATED.get(d, {}).items():
        out.append(
          Run(
            d,
            f"cikgrec-{name}_interest",
            "cikgrec",
            BASE + (f"--config.interest_file={path}",),
            seed,
          )
        )
  return out


if __name__ == "__main__":
  main(["user_knowledge"], doc=__doc__, seeds=SEEDS)

"""Times one mini-batch train step of the authors' PyTorch release (laowangzi/CIKGRec) on the CPU
(or a GPU, --device=cuda),
for side-by-side ratios with experiments/bench.py. The release is not part of this repository: pass
the path of a checkout (its data/ folder included). Needs torch and torch_geometric.

What is timed is the body of the release's train.py loop for one fixed mini-batch: zero_grad, the
BPR forward, the cross-domain contrastive loss over its three views, the interest reconstruction,
backward and the Adam step; graphs and model built exactly as train.py builds them. Warm-up step
excluded; median of `--repeats`; `--threads` torch threads (2 = this machine). Prints one JSON,
with the machine it ran on (cikg_jax.runtime.machine).

  python experiments/bench_release.py --release=/tmp/cikg_release --dataset=book-crossing
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time


def _nltk_stand_in():
  """The release's utils.py imports nltk's stopwords and WordNetLemmatizer for its text tools,
  which the train step never calls: where nltk is not installed (a GPU image), empty stand-in
  modules satisfy the import."""
  try:
    import nltk  # noqa: F401
  except ImportError:
    import types

    nltk = types.ModuleType("nltk")
    corpus, stem = types.ModuleType("nltk.corpus"), types.ModuleType("nltk.stem")
    corpus.stopwords = types.SimpleNamespace(words=lambda *a, **k: [])
    stem.WordNetLemmatizer = object
    nltk.corpus, nltk.stem = corpus, stem
    sys.modules.update({"nltk": nltk, "nltk.corpus": corpus, "nltk.stem": stem})


def build(release: str, dataset: str, seed: int, device: str = "cpu"):
  """The release's loader, graphs, model and optimizer, as its train.py builds them."""
  import torch
  from torch_geometric.utils import coalesce

  sys.path.insert(0, release)
  os.chdir(release)  # MyLoader reads ./data/<dataset>
  _nltk_stand_in()
  from models.Model import CIKGRec  # noqa: E402
  from utils import MyLoader, init_seed  # noqa: E402

  config = json.load(open(f"./config/{dataset}.json"))
  config["device"] = device
  init_seed(seed, True)
  loader = MyLoader(config, verbose=False)
  tr = loader.train
  src = tr["userid"].to_list() + tr["itemid"].to_list()
  tgt = tr["itemid"].to_list() + tr["userid"].to_list()
  src_cf = list(src)  # the release builds tgt_cf too, unused
  src_k = loader.kg_org["head"].to_list() + loader.kg_org["tail"].to_list()
  tgt_k = loader.kg_org["tail"].to_list() + loader.kg_org["head"].to_list()
  src_in = loader.kg_interest["uid"].to_list() + loader.kg_interest["interest"].to_list()
  tgt_in = loader.kg_interest["interest"].to_list() + loader.kg_interest["uid"].to_list()
  # train.py's graphs, its aliasing quirks included (docs/method.md §2, §6)
  ig = coalesce(torch.LongTensor([src_in + src_cf, tgt_in + src_cf]))
  kg = coalesce(torch.LongTensor([src_k + src_cf, tgt_k + src_cf]))
  cikg = coalesce(torch.LongTensor([src + src_k + src_in, tgt + tgt_k + tgt_in]))
  cf = coalesce(torch.LongTensor([src + src_k + src_in, tgt + tgt_k + tgt_in]))
  ig, kg, cf, cikg = (g.to(device) for g in (ig, kg, cf, cikg))
  model = CIKGRec(config, cikg).to(device)
  optimizer = torch.optim.Adam(model.parameters(), lr=config["lr"])
  train_loader, _ = loader.get_cf_loader(bs=config["batch_size"])
  user, pos, neg = (x.squeeze().to(device) for x in next(iter(train_loader)))
  return model, optimizer, (user, pos, neg), (ig, kg, cf, cikg)


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--release", required=True, help="path of a CIKGRec release checkout")
  p.add_argument("--dataset", default="dbbook2014")
  p.add_argument("--threads", type=int, default=2)
  p.add_argument("--repeats", type=int, default=4)
  p.add_argument("--mask_rate", type=float, default=0.3)  # as experiments/bench.py
  p.add_argument("--device", default="cpu", help="cpu, or cuda for the GPU table")
  args = p.parse_args()
  import torch

  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  from cikg_jax import runtime  # reads files only: no jax in the release's Python

  torch.set_num_threads(args.threads)
  t0 = time.perf_counter()
  model, optimizer, (user, pos, neg), (ig, kg, cf, cikg) = build(
    os.path.abspath(args.release), args.dataset, 2024, args.device
  )
  sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
  setup = time.perf_counter() - t0
  model.train()
  model.gmae_p = args.mask_rate

  def step():
    optimizer.zero_grad()
    loss = (
      model(user, pos, neg)
      + model.cross_domain_contrastive_loss(user, pos, ig, kg, cf)
      + model.interest_recon_loss(cikg)
    )
    loss.backward()
    optimizer.step()
    value = float(loss.detach())  # waits for the device
    sync()
    return value

  step()  # warm-up
  times = []
  for _ in range(args.repeats):
    t = time.perf_counter()
    step()
    times.append(time.perf_counter() - t)
  print(
    json.dumps(
      {
        "machine": runtime.machine(),
        "impl": "release",
        "dataset": args.dataset,
        "threads": args.threads,
        "device": args.device,
        "torch": torch.__version__,
        "step_seconds_median": statistics.median(times),
        "step_seconds": times,
        "setup_seconds": setup,
        "cikg_edges": int(cikg.shape[1]),
        "batch": int(user.shape[0]),
      }
    )
  )


if __name__ == "__main__":
  main()

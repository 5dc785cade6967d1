"""Training curves from metrics.jsonl: loss terms and the selection metrics per epoch."""

from __future__ import annotations

import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

LOSS_KEYS = ("loss", "bpr", "reg", "cl", "uir", "kge")


def training_curves(metrics_path: str, out_png: str, selection: str) -> None:
  with open(metrics_path) as f:
    rows = [json.loads(ln) for ln in f if ln.strip()]
  if not rows:
    return
  epochs = [r["epoch"] for r in rows]
  fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(11, 4))
  for key in LOSS_KEYS:
    if key in rows[0]:
      ax_loss.plot(epochs, [r[key] for r in rows], label=key)
  ax_loss.set_yscale("log")
  ax_loss.set_xlabel("epoch")
  ax_loss.set_title("loss terms (weighted)")
  ax_loss.legend()
  for key in ("recall@20", "ndcg@20", "recall@50", "ndcg@50"):
    ax_metric.plot(epochs, [r[f"{selection}/{key}"] for r in rows], label=key)
  ax_metric.axvline(rows[-1]["best_epoch"], color="grey", ls="--", lw=1, label="best epoch")
  ax_metric.set_xlabel("epoch")
  ax_metric.set_title(f"{selection} metrics")
  ax_metric.legend()
  fig.tight_layout()
  fig.savefig(out_png, dpi=100)
  plt.close(fig)

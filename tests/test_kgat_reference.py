"""experiments/kgat_reference.py reads the reference's log lines and our metrics.jsonl onto one
epoch count (the reference counts from 1, ours from 0) and compares them where both evaluated."""

import json

from experiments import kgat_reference

LOG = """\
2026-12-04 15:33:44,215 - root - INFO - CF Training: Epoch 0001 Total Iter 0050 | Total Time 19.3s | Iter Mean Loss 0.5535
2026-12-04 15:34:43,702 - root - INFO - KG Training: Epoch 0001 Total Iter 0181 | Total Time 59.5s | Iter Mean Loss 0.2849
2026-12-04 15:34:44,790 - root - INFO - CF + KG Training: Epoch 0001 | Total Time 79.9s
2026-12-04 15:35:39,802 - root - INFO - CF + KG Training: Epoch 0002 | Total Time 55.0s
2026-12-04 15:36:00,000 - root - INFO - CF Evaluation: Epoch 0002 | Total Time 3.1s | Precision [0.0500, 0.0300], Recall [0.2500, 0.4000], NDCG [0.1500, 0.2000]
"""


def test_reference_log_and_ours_meet_on_the_reference_epoch_count(tmp_path):
  (tmp_path / "ref.log").write_text(LOG)
  ref = kgat_reference.read_reference(str(tmp_path / "ref.log"))
  assert ref["curve"] == {2: {"recall@20": 0.25, "recall@50": 0.4, "ndcg@20": 0.15, "ndcg@50": 0.2}}
  assert ref["epoch_seconds"] == [79.9, 55.0] and ref["epochs_run"] == 2
  assert ref["mean_loss"] == {"cf": {1: 0.5535}, "kg": {1: 0.2849}}
  rows = []
  for epoch, recall in ((0, 0.1), (1, 0.3)):
    rows.append(
      {
        "epoch": epoch,
        "bpr": 0.5,
        "reg": 0.25,
        "kge": 0.125,
        "train_seconds": 7.0,
        **{f"test/{k}@{n}": recall for k in ("recall", "ndcg") for n in (20, 50)},
      }
    )
  (tmp_path / "ours").mkdir()
  (tmp_path / "ours" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  ours = kgat_reference.read_ours(str(tmp_path / "ours"))
  assert sorted(ours["curve"]) == [1, 2] and ours["mean_loss"]["cf"][2] == 0.75
  cmp = kgat_reference.compare(ref, ours)
  assert cmp["epochs_compared"] == [2]  # our epoch 1 is the reference's epoch 2
  assert cmp["rows"][0]["ours"]["recall@20"] == 0.3 and cmp["best_reference"] == (0.25, 2)

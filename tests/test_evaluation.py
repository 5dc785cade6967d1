import numpy as np
import pytest

from cikg_jax import evaluation

KS = (1, 2, 3)


def _numpy_metrics(scores, truth, exclude, ks):
  """Independent reference: argsort per user, explicit DCG/IDCG loops."""
  out = {}
  rows = []
  for u in range(scores.shape[0]):
    if not truth[u]:
      continue
    s = scores[u].astype(np.float64).copy()
    s[list(exclude[u])] = -np.inf
    ranking = np.argsort(-s, kind="stable")
    row = {}
    for k in ks:
      top = ranking[:k]
      hits = [1.0 if it in truth[u] else 0.0 for it in top]
      dcg = sum(h / np.log2(r + 2) for r, h in enumerate(hits))
      idcg = sum(1.0 / np.log2(r + 2) for r in range(min(len(truth[u]), k)))
      row[f"recall@{k}"] = sum(hits) / len(truth[u])
      row[f"ndcg@{k}"] = dcg / idcg
      row[f"precision@{k}"] = sum(hits) / k
      row[f"hit@{k}"] = float(sum(hits) > 0)
    rows.append(row)
  for key in rows[0]:
    out[key] = np.mean([r[key] for r in rows])
  return out


def _pairs(lists):
  return np.array([(u, i) for u, items in enumerate(lists) for i in items], dtype=np.int64)


def test_hand_computed_case():
  # one user, 5 items; item 4 is a training item (excluded), truth = {1, 3}
  user = np.array([[1.0]], np.float32)
  items = np.array([[5.0], [4.0], [3.0], [2.0], [9.0]], np.float32)
  es = evaluation.make_eval_set(np.array([[0, 1], [0, 3]]), [np.array([[0, 4]])], 1, 5, 4)
  got, _ = evaluation.evaluate(user, items, es, (1, 2, 3))
  # ranking after exclusion: 0, 1, 2, 3 -> hits at ranks 2 and 4
  assert got["recall@1"] == 0.0 and got["hit@1"] == 0.0
  assert got["recall@2"] == pytest.approx(0.5)
  assert got["precision@2"] == pytest.approx(0.5)
  assert got["ndcg@2"] == pytest.approx((1 / np.log2(3)) / (1 + 1 / np.log2(3)), rel=1e-6)
  assert got["recall@3"] == pytest.approx(0.5)
  assert got["hit@3"] == 1.0


def test_against_numpy_reference_and_chunk_sizes():
  rng = np.random.default_rng(0)
  n_users, n_items, dim = 37, 23, 5
  u = rng.standard_normal((n_users, dim)).astype(np.float32)
  it = rng.standard_normal((n_items, dim)).astype(np.float32)
  train, truth, valid = [], [], []
  for _ in range(n_users):
    perm = rng.permutation(n_items)
    n_tr, n_te, n_va = rng.integers(1, 8), rng.integers(0, 5), rng.integers(0, 3)
    train.append(set(perm[:n_tr].tolist()))
    valid.append(set(perm[n_tr : n_tr + n_va].tolist()))
    truth.append(set(perm[n_tr + n_va : n_tr + n_va + n_te].tolist()))
  exclude = [a | b for a, b in zip(train, valid)]
  ref = _numpy_metrics(u @ it.T, truth, exclude, KS)
  results = []
  for chunk in (1, 4, 16, 64):
    es = evaluation.make_eval_set(
      _pairs(truth), [_pairs(train), _pairs(valid)], n_users, n_items, chunk
    )
    got, _ = evaluation.evaluate(u, it, es, KS)
    for key, value in ref.items():
      assert got[key] == pytest.approx(value, abs=1e-6), key
    results.append(got)
  assert all(r == results[0] for r in results)  # identical, not just close


def test_groups_partition_users_by_training_count():
  rng = np.random.default_rng(1)
  n_users, n_items = 40, 30
  u = rng.standard_normal((n_users, 4)).astype(np.float32)
  it = rng.standard_normal((n_items, 4)).astype(np.float32)
  counts = rng.integers(1, 20, size=n_users)
  truth = _pairs([[int(rng.integers(n_items))] for _ in range(n_users)])
  es = evaluation.make_eval_set(truth, [], n_users, n_items, 8)
  overall, groups = evaluation.evaluate(u, it, es, KS, counts, n_groups=4)
  assert sum(g["n_users"] for g in groups) == n_users
  lows = [g["train_interactions"] for g in groups]
  assert all(a[1] <= b[0] for a, b in zip(lows, lows[1:]))  # sparsest group first
  weighted = sum(g["recall@3"] * g["n_users"] for g in groups) / n_users
  assert weighted == pytest.approx(overall["recall@3"], abs=1e-6)


def test_equal_interaction_groups_hand_worked():
  # counts sorted: 1,1,2,2,4,6 (total 16); running totals before each user: 0,1,2,4,6,10.
  # With 2 groups the boundary is 8: users with running total < 8 go to group 0.
  counts = np.array([6, 1, 2, 4, 1, 2])
  users = np.arange(6)
  groups = evaluation.equal_interaction_groups(counts, users, 2)
  assert [sorted(idx.tolist()) for _, idx, _, _ in groups] == [[1, 2, 3, 4, 5], [0]]
  assert [(lo, hi) for _, _, lo, hi in groups] == [(1, 4), (6, 6)]
  # 4 groups, boundaries 4, 8, 12: totals 0,1,2 -> g0; 4,6 -> g1; 10 -> g2; none in g3.
  groups = evaluation.equal_interaction_groups(counts, users, 4)
  assert [g for g, *_ in groups] == [0, 1, 2]
  assert [sorted(idx.tolist()) for _, idx, _, _ in groups] == [[1, 2, 4], [3, 5], [0]]


def test_evaluate_groups_matches_evaluate_and_partitions_users():
  rng = np.random.default_rng(0)
  n_users, n_items = 40, 30
  u, it = rng.normal(size=(n_users, 8)), rng.normal(size=(n_items, 8))
  train = np.array(
    [(x, y) for x in range(n_users) for y in rng.choice(n_items, 1 + x % 7, replace=False)]
  )
  test = np.array([(x, (train[train[:, 0] == x, 1].max() + 1) % n_items) for x in range(n_users)])
  test = test[[t[1] not in train[train[:, 0] == t[0], 1] for t in test]]
  es = evaluation.make_eval_set(test, [train], n_users, n_items, 16)
  counts = np.bincount(train[:, 0], minlength=n_users)
  overall, quart = evaluation.evaluate(u, it, es, KS, counts, n_groups=4)
  overall2, schemes = evaluation.evaluate_groups(u, it, es, KS, counts, 4)
  assert overall == overall2 and schemes["quantile"] == quart
  eq = schemes["equal_interactions"]
  assert sum(g["n_users"] for g in eq) == len(es.user_ids)
  totals = [g["train_interactions_total"] for g in eq]
  assert max(totals) - min(totals) <= 2 * counts.max()  # equal totals up to one user's count
  weighted = sum(g["recall@3"] * g["n_users"] for g in eq) / len(es.user_ids)
  assert abs(weighted - overall["recall@3"]) < 1e-6

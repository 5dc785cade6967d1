"""Top-K recommendations for given users from a trained run (its best-epoch parameters), with the
users' known (training and validation) items excluded. Users and items are named by the dataset's
own ids (user_list.txt / item_list.txt org ids, where the dataset has them) and item names.

  python -m cikg_jax.predict --workdir=runs/dbbook2014 --users=6873,6872 --k=10 --format=tsv
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Dict, List, Optional, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from cikg_jax import cli_help
from cikg_jax.data import dataset as dataset_lib
from cikg_jax.data import files
from cikg_jax.training import checkpoint as ckpt
from cikg_jax.training import steps


class PredictError(ValueError):
  """A request predict cannot answer; the message is one line saying what to pass instead."""


def _run_config(workdir: str, data_dir: Optional[str] = None) -> ml_collections.ConfigDict:
  if not os.path.isdir(workdir):
    raise PredictError(f"--workdir={workdir}: no such directory")
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise PredictError(f"--workdir={workdir}: no config.json there, so not a training run")
  with open(path) as f:
    config = ml_collections.ConfigDict(json.load(f))
  if data_dir:
    config.data_dir = data_dir
  synthetic = config.dataset in ("synthetic", "synthetic_large")
  if not synthetic and not config.get("data_dir") and not os.environ.get(dataset_lib.DATA_DIR_ENV):
    raise PredictError(
      f"{path}: the run does not record where dataset {config.dataset!r} is: pass "
      f"--data_dir=DIR (the folder holding {config.dataset}/) or set {dataset_lib.DATA_DIR_ENV}"
    )
  ckpt_dir = os.path.join(workdir, "checkpoints")
  saved = os.listdir(ckpt_dir) if os.path.isdir(ckpt_dir) else []
  if not any(name.isdigit() for name in saved):  # orbax names each step's folder by its number
    raise PredictError(f"{ckpt_dir}: no checkpoint to predict from (train the run first)")
  return config


def load_run(workdir: str, data_dir: Optional[str] = None):
  """Rebuilds data and graphs from the run's config.json and restores its best parameters."""
  config = _run_config(workdir, data_dir)
  ds, config, net, graphs = steps.setup(config)
  tx, kge_tx = steps.make_optimizers(config)
  state = steps.create_train_state(jax.random.PRNGKey(0), net, tx, kge_tx, config.kge.use)
  restored = ckpt.restore_latest(ckpt.manager(workdir), state, state.params)
  if restored is None:
    raise PredictError(
      f"{workdir}/checkpoints: no checkpoint to predict from (train the run first)"
    )
  return ds, net, graphs, restored[1]


def known_items(ds) -> np.ndarray:
  """(user, item) rows never recommended: what the model was trained and selected on."""
  return np.concatenate([ds.train, ds.valid]) if len(ds.valid) else ds.train


def scores_and_top_k(ds, net, graphs, params, users: Sequence[int], k: int, user_name=str):
  """(top-k item ids, their scores) per user; known items are never among them, and `k` must
  leave every user that many candidates."""
  bad = [u for u in users if not 0 <= u < ds.n_users]
  if bad:
    raise ValueError(f"user ids out of range 0..{ds.n_users - 1}: {bad[:5]}")
  known = known_items(ds)
  n_known = {u: int((known[:, 0] == u).sum()) for u in users}
  fewest = min(users, key=lambda u: ds.n_items - n_known[u])
  n_candidates = ds.n_items - n_known[fewest]
  if not 1 <= k <= n_candidates:
    raise PredictError(
      f"--k={k}: must be 1..{n_candidates} (user {user_name(fewest)} has {n_candidates} candidate items: "
      f"{ds.n_items} items less {n_known[fewest]} known)"
    )
  user_emb, item_emb = steps.make_embed_fn(net)(params, graphs)
  scores = np.array(user_emb[jnp.asarray(users)] @ item_emb.T)  # writable copy
  for row, u in enumerate(users):
    scores[row, known[known[:, 0] == u, 1]] = -np.inf
  order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
  return {
    int(u): (order[row].tolist(), scores[row, order[row]].tolist()) for row, u in enumerate(users)
  }


def top_k(ds, net, graphs, params, users: Sequence[int], k: int) -> Dict[int, List[int]]:
  """Top-k item ids (internal) per internal user id."""
  return {u: items for u, (items, _) in scores_and_top_k(ds, net, graphs, params, users, k).items()}


class Ids:
  """The dataset's own user and item ids (and item names), from user_list.txt / item_list.txt
  where present; internal ids otherwise."""

  def __init__(self, ds):
    def read(name):
      path = os.path.join(ds.path, name) if ds.path else ""
      return files.read_id_list(path) if path and os.path.exists(path) else None

    users, items = read("user_list.txt"), read("item_list.txt")
    self.users_path = users.path if users else None
    self.user_ids = users.org_ids if users else [str(u) for u in range(ds.n_users)]
    self.item_ids = items.org_ids if items else [str(i) for i in range(ds.n_items)]
    names = items.names if items else [None] * ds.n_items
    self.item_names = [n if n and n.lower() not in files.NAMELESS else None for n in names]
    self.user_of = {}
    for u, org in enumerate(self.user_ids):
      self.user_of.setdefault(org, u)

  def parse_users(self, text: str) -> List[int]:
    tokens = [t.strip() for t in text.split(",")]
    if not any(tokens):
      raise PredictError(
        "--users: empty; give comma-separated user ids, e.g. --users=" + ",".join(self.user_ids[:3])
      )
    out = []
    for t in tokens:
      if not t:
        continue
      if t not in self.user_of:
        where = self.users_path or f"the users 0..{len(self.user_ids) - 1} of train.txt"
        raise PredictError(f"--users: unknown user {t!r} (not in {where})")
      out.append(self.user_of[t])
    return out


def predictions(ids: Ids, recs) -> List[Dict]:
  """One row per (user, rank): the dataset's ids, the item's name, the score."""
  rows = []
  for u, (items, scores) in recs.items():
    for rank, (i, s) in enumerate(zip(items, scores), 1):
      rows.append(
        {
          "user": ids.user_ids[u],
          "rank": rank,
          "item": ids.item_ids[i],
          "name": ids.item_names[i],
          "score": round(float(s), 6),
        }
      )
  return rows


def format_rows(rows: List[Dict], fmt: str) -> str:
  if fmt == "json":
    by_user: Dict[str, List[Dict]] = {}
    for r in rows:
      by_user.setdefault(r["user"], []).append({k: r[k] for k in ("item", "name", "score")})
    return json.dumps(by_user, ensure_ascii=False, indent=1)
  cols = ("user", "rank", "item", "name", "score")
  clean = lambda v: "" if v is None else " ".join(str(v).split("\t"))
  return "\n".join(["\t".join(cols)] + ["\t".join(clean(r[c]) for c in cols) for r in rows])


def main(argv=None):
  p = cli_help.ArgumentParser(
    description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
  )
  p.add_argument("--workdir", required=True, help="a training run's work directory")
  p.add_argument(
    "--users",
    required=True,
    help="comma-separated user ids as the dataset names them (user_list.txt org ids)",
  )
  p.add_argument("--k", type=int, default=20, help="items per user (default 20)")
  p.add_argument("--format", choices=["json", "tsv"], default="json", help="output format")
  p.add_argument(
    "--data_dir",
    default="",
    help="the folder holding the run's dataset, if it moved or the run does not record it",
  )
  args = p.parse_args(argv)
  try:
    ds, net, graphs, params = load_run(args.workdir, args.data_dir or None)
    ids = Ids(ds)
    users = ids.parse_users(args.users)
    recs = scores_and_top_k(ds, net, graphs, params, users, args.k, ids.user_ids.__getitem__)
  except (PredictError, files.DataFormatError, FileNotFoundError) as e:
    sys.exit(f"error: {e}")
  print(format_rows(predictions(ids, recs), args.format))


if __name__ == "__main__":
  main()

"""Top-K recommendations for given users from a trained run (its best-epoch parameters), with the
users' known items excluded.

  python -m cikg_jax.predict --workdir=runs/dbbook2014 --users=0,1,2 --k=10
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Dict, List, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from cikg_jax import checkpoint as ckpt
from cikg_jax import steps


def load_run(workdir: str):
  """Rebuilds data and graphs from the run's config.json and restores its best parameters."""
  with open(os.path.join(workdir, "config.json")) as f:
    config = ml_collections.ConfigDict(json.load(f))
  ds, config, net, graphs = steps.setup(config)
  tx, kge_tx = steps.make_optimizers(config)
  state = steps.create_train_state(jax.random.PRNGKey(0), net, tx, kge_tx, config.kge.use)
  restored = ckpt.restore_latest(ckpt.manager(workdir), state, state.params)
  if restored is None:
    raise FileNotFoundError(f"{workdir}/checkpoints: no checkpoint to predict from")
  return ds, net, graphs, restored[1]


def top_k(ds, net, graphs, params, users: Sequence[int], k: int) -> Dict[int, List[int]]:
  bad = [u for u in users if not 0 <= u < ds.n_users]
  if bad:
    raise ValueError(f"user ids out of range 0..{ds.n_users - 1}: {bad[:5]}")
  user_emb, item_emb = steps.make_embed_fn(net)(params, graphs)
  scores = np.array(user_emb[jnp.asarray(users)] @ item_emb.T)  # writable copy
  known = np.concatenate([ds.train, ds.valid]) if len(ds.valid) else ds.train
  for row, u in enumerate(users):
    scores[row, known[known[:, 0] == u, 1]] = -np.inf
  order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
  return {int(u): order[row].tolist() for row, u in enumerate(users)}


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--workdir", required=True)
  p.add_argument("--users", required=True, help="comma-separated user ids")
  p.add_argument("--k", type=int, default=20)
  args = p.parse_args(argv)
  ds, net, graphs, params = load_run(args.workdir)
  users = [int(x) for x in args.users.split(",") if x.strip()]
  print(json.dumps(top_k(ds, net, graphs, params, users, args.k)))


if __name__ == "__main__":
  main()

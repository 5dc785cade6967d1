"""CIKGRec as pure functions of (params, graphs, batch, key): parameters, the masked
user-interest reconstruction, the three contrastive views and the total loss (METHOD.md §2-4).

`Graphs` carries the propagation operators and the static sizes, and travels as a jit argument
(not a closure constant) so large edge arrays are not baked into the compiled program.
"""

from __future__ import annotations

from typing import Dict, Tuple

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from cikg_jax import baselines, losses
from cikg_jax import propagation as prop


@flax.struct.dataclass
class Graphs:
  ops: Dict[str, prop.Operator]
  interest_rows: jnp.ndarray     # node rows the reconstruction may mask
  n_users: int = flax.struct.field(pytree_node=False)
  n_items: int = flax.struct.field(pytree_node=False)
  n_nodes: int = flax.struct.field(pytree_node=False)


def make_graphs(graphs, ds, config) -> Graphs:
  """Operators for the graphs the configured losses need, and the rows UIR may mask."""
  if (b := baselines.get(config)) is not None:  # SimGCL, KGAT (config.model.name)
    return b.make_graphs(graphs, ds, config)
  needed = ["cikg"]
  if config.uir.weight > 0:
    needed += ["cikg_with_loops", "cikg_no_loops"]
  if config.cl.weight > 0:
    needed += ["cf", "interest", "kg"]
  built = {}  # aliased graphs (e.g. cikg is cikg_with_loops) share one operator
  ops = {}
  for name in needed:
    g = graphs[name]
    if id(g) not in built:
      built[id(g)] = prop.make_operator(g)
    ops[name] = built[id(g)]
  if config.views == "release" and len(ds.user_interest):
    # The release masks the whole interest id range, isolated rows included (METHOD.md §7.5):
    # min..max id (544 / 245 / 550 rows), not the unused ids between the entities and the first.
    ids = ds.user_interest[:, 1]
    rows = ds.n_users + np.arange(ids.min(), ids.max() + 1)
  else:
    rows = ds.n_users + ds.connected_interest_ids()
  return Graphs(ops=ops, interest_rows=jnp.asarray(rows, jnp.int32), n_users=ds.n_users,
                n_items=ds.n_items, n_nodes=ds.n_nodes)


def init_params(key: jax.Array, n_nodes: int, n_relations: int, config) -> Dict:
  """Xavier-uniform node table; mask token (zeros) and the encoder-to-decoder Linear(d, d) for
  UIR; relation vectors for TransE."""
  if (b := baselines.get(config)) is not None:
    return b.init_params(key, n_nodes, n_relations, config)
  dim = config.model.embed_dim
  k_emb, k_e2d, k_rel = jax.random.split(key, 3)
  params = {"embedding": nn.initializers.xavier_uniform()(k_emb, (n_nodes, dim), jnp.float32)}
  if config.uir.weight > 0:
    params["mask_token"] = jnp.zeros((1, dim), jnp.float32)
    params["e2d"] = _encoder_to_decoder(dim).init(k_e2d, jnp.zeros((1, dim)))["params"]
  if config.kge.use:
    params["relation"] = nn.initializers.xavier_uniform()(k_rel, (n_relations, dim), jnp.float32)
  return params


def _encoder_to_decoder(dim: int) -> nn.Dense:
  return nn.Dense(dim, kernel_init=nn.initializers.xavier_uniform())  # as the release's Linear


def _backend(config) -> str:
  b = config.model.backend
  return prop.default_backend() if b == "auto" else b


# ---- user-interest reconstruction ---------------------------------------------------------
def choose_masked_rows(key, n_rows: int, mask_rate, replace_rate: float):
  """Fixed-shape choice of floor(p * n) rows (GraphMAE's int(p * n)): a random ranking,
  `rank < k`. Of the chosen,
  the last `replace_rate` share by rank is replaced by other interest rows, the rest gets the
  mask token. Returns (chosen, token, noise) boolean vectors."""
  ranks = jnp.argsort(jnp.argsort(jax.random.uniform(key, (n_rows,))))
  k = jnp.floor(mask_rate * n_rows + 1e-6).astype(jnp.int32)
  n_noise = jnp.floor(replace_rate * k).astype(jnp.int32)
  chosen = ranks < k
  token = ranks < (k - n_noise)
  return chosen, token, chosen & ~token


def uir_loss(params, graphs: Graphs, key, mask_rate, config):
  """GraphMAE-style masked reconstruction of interest-node embeddings through the CIKG."""
  backend = _backend(config)
  ego = params["embedding"]
  rows = graphs.interest_rows
  k_choose, k_noise, k_drop = jax.random.split(key, 3)
  chosen, token, noise = choose_masked_rows(k_choose, rows.shape[0], mask_rate,
                                            config.uir.replace_rate)
  donors = rows[jax.random.randint(k_noise, rows.shape, 0, rows.shape[0])]
  original = ego[rows]
  masked = jnp.where(token[:, None], params["mask_token"],
                     jnp.where(noise[:, None], ego[donors], original))
  x = ego.at[rows].set(masked)
  if config.uir.edge_drop > 0:
    # Drop edges of the CIKG, then add self loops (added loops are never dropped); the decoder
    # runs on the same dropped graph, as the release's does.
    op = graphs.ops["cikg_with_loops"]
    w = prop.normalized_weights(op, prop.edge_keep_mask(op, k_drop, config.uir.edge_drop))
  else:
    op = graphs.ops["cikg_no_loops"]
    w = op.weights
  enc = prop.propagate(op, x, config.uir.enc_layers, w, backend)
  h = _encoder_to_decoder(ego.shape[1]).apply({"params": params["e2d"]}, enc)
  h = h.at[rows].set(jnp.where(chosen[:, None], 0.0, h[rows]))
  dec = prop.propagate(op, h, config.uir.dec_layers, w, backend)
  err = losses.scaled_cosine_error(dec[rows], original, chosen.astype(jnp.float32),
                                   config.uir.gamma)
  return err, jnp.sum(chosen)


# ---- cross-domain contrastive learning ----------------------------------------------------
def simgcl_noise(key, eps: float):
  """e += sign(e) * normalize(U[0, 1)) * eps after every layer, a fresh draw per layer."""
  def perturb(layer, e):
    u = jax.random.uniform(jax.random.fold_in(key, layer), e.shape)
    return e + jnp.sign(e) * losses.l2_normalize(u) * eps
  return perturb


CL_VIEWS = ("cf", "interest", "kg")  # view 1 (perturbed), 2 (user anchors), 3 (item anchors)


def with_stacked_views(graphs: Graphs) -> Graphs:
  """`graphs` plus `ops["views"]`: the three views as one block-diagonal operator over a 3n node
  layout, so cl_loss propagates them with one sparse product per layer (same values bit for bit).
  Opt-in: on this project's CPU it was no faster (0.65x on dbbook2014, 1.07x on book-crossing,
  README "Speed"), so make_graphs does not build it."""
  stacked = prop.stack_graphs([graphs.ops[v].graph for v in CL_VIEWS])
  return graphs.replace(ops={**graphs.ops, "views": prop.make_operator(stacked)})


def view_embeddings(params, graphs: Graphs, key, config):
  """The three propagated views of the ego table (view 1 with SimGCL noise), unnormalised.

  With the stacked operator (`ops["views"]`) the views travel as one (3n, d) array and each layer
  is one sparse product; the noise is drawn for view 1's n rows with the same keys, so the values
  equal the three separate propagations'."""
  backend = _backend(config)
  ego = params["embedding"]
  layers = config.model.num_layers
  noise = simgcl_noise(key, config.cl.eps)
  if "views" not in graphs.ops:
    return (prop.propagate(graphs.ops["cf"], ego, layers, None, backend, perturb=noise),
            prop.propagate(graphs.ops["interest"], ego, layers, None, backend),
            prop.propagate(graphs.ops["kg"], ego, layers, None, backend))
  n = graphs.n_nodes
  perturb = lambda layer, e: jnp.concatenate([noise(layer, e[:n]), e[n:]])
  out = prop.propagate(graphs.ops["views"], jnp.concatenate([ego] * len(CL_VIEWS)), layers, None,
                       backend, perturb=perturb)
  return out[:n], out[n:2 * n], out[2 * n:]


def cl_loss(params, graphs: Graphs, batch, key, config):
  z1, z2, z3 = map(losses.l2_normalize, view_embeddings(params, graphs, key, config))
  users, pos, mask = batch["users"], batch["pos"], batch["mask"]
  n_users = graphs.n_users
  count = batch.get("count")
  user_term = losses.info_nce(z1[users], z2[:n_users], users, mask, config.cl.tau, count)
  item_term = losses.info_nce(z1[n_users + pos], z3[n_users:], pos, mask, config.cl.tau, count)
  return user_term, item_term


# ---- the main objective -------------------------------------------------------------------
def final_embeddings(params, graphs: Graphs, config):
  """Propagated embeddings of the main graph, for scoring: (users, items)."""
  if (b := baselines.get(config)) is not None:
    return b.final_embeddings(params, graphs, config)
  out = prop.propagate(graphs.ops["cikg"], params["embedding"], config.model.num_layers, None,
                       _backend(config))
  return out[:graphs.n_users], out[graphs.n_users:graphs.n_users + graphs.n_items]


def total_loss(params, graphs: Graphs, batch, key, config) -> Tuple[jnp.ndarray, Dict]:
  """L = L_rec + L_CL + L_UIR for one mini-batch; returns (loss, per-term metrics).

  For a shard of a data-parallel batch, `batch["count"]` (real rows of the whole batch) and
  `batch["shard_share"]` (1/n) make the shards' losses and gradients sum to the whole batch's."""
  if (b := baselines.get(config)) is not None:
    return b.total_loss(params, graphs, batch, key, config)
  backend = _backend(config)
  k_edge, k_msg, k_cl, k_uir = jax.random.split(key, 4)
  ego = params["embedding"]
  op = graphs.ops["cikg"]
  keep = (prop.edge_keep_mask(op, k_edge, config.model.edge_dropout)
          if config.model.edge_dropout > 0 else None)
  x = ego
  if config.model.message_dropout > 0:
    p = config.model.message_dropout
    x = jnp.where(jax.random.bernoulli(k_msg, 1 - p, ego.shape), ego / (1 - p), 0.0)
  weights = prop.normalized_weights(op, keep) if keep is not None else op.weights
  out = prop.propagate(op, x, config.model.num_layers, weights, backend)
  users = batch["users"]
  pos = batch["pos"] + graphs.n_users
  neg = batch["neg"] + graphs.n_users
  mask, count = batch["mask"], batch.get("count")
  bpr = losses.bpr_loss(out[users], out[pos], out[neg], mask, config.train.cf_weight, count)
  reg = losses.l2_reg((ego[users], ego[pos], ego[neg]), mask, config.train.l2, count)
  metrics = {"bpr": bpr, "reg": reg}
  loss = bpr + reg
  if config.cl.weight > 0:
    user_term, item_term = cl_loss(params, graphs, batch, k_cl, config)
    metrics["cl_user"], metrics["cl_item"] = user_term, item_term
    metrics["cl"] = config.cl.weight * (user_term + item_term)
    loss = loss + metrics["cl"]
  if config.uir.weight > 0:
    err, n_masked = uir_loss(params, graphs, k_uir, batch["mask_rate"], config)
    # UIR does not depend on the batch: each of n data-parallel shards carries 1/n of it.
    metrics["uir"] = config.uir.weight * err * batch.get("shard_share", 1.0)
    metrics["uir_masked_rows"] = n_masked.astype(jnp.float32) * batch.get("shard_share", 1.0)
    loss = loss + metrics["uir"]
  metrics["loss"] = loss
  return loss, metrics


def kge_loss(params, batch, config):
  if (b := baselines.get(config)) is not None:
    return b.kge_loss(params, batch, config)
  emb, rel = params["embedding"], params["relation"]
  return losses.transe_loss(emb[batch["head"]], rel[batch["relation"]], emb[batch["tail"]],
                            emb[batch["neg_tail"]], config.kge.l2)

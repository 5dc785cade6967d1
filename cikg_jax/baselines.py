"""Baselines trained by CIKGRec's driver (same sampler, evaluation, early stopping, checkpoints):
SimGCL (Yu et al., SIGIR 2022) and KGAT (Wang et al., KDD 2019).

Each is a `Baseline` of pure functions with CIKGRec's signatures (cikg_jax/model.py forwards to
the one `config.model.name` names), so train.py, predict.py and the data-parallel step need not
know which model they run. Every baseline owns its graph pytree: SimGCL the user-item graph, KGAT
the collaborative knowledge graph with relation types. Node rows are the framework's
`[users | items = first entities | other entities | interests]`; the train driver sizes the table
for all of them, and a baseline uses only its leading rows (the rest get no gradient).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Dict, Optional, Tuple

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import jraph
import numpy as np

from cikg_jax import graph as graph_lib
from cikg_jax import losses
from cikg_jax import propagation as prop


@dataclasses.dataclass(frozen=True)
class Baseline:
  make_graphs: Callable        # (graphs, ds, config) -> a pytree the loss and embeddings take
  init_params: Callable        # (key, n_nodes, n_relations, config) -> params
  total_loss: Callable         # (params, graphs, batch, key, config) -> (loss, metrics)
  final_embeddings: Callable   # (params, graphs, config) -> (users, items)
  kge_loss: Optional[Callable] = None  # (params, batch, config) -> loss, when config.kge.use


def _backend(config) -> str:
  b = config.model.backend
  return prop.default_backend() if b == "auto" else b


def _xavier_table(key, n_rows: int, dim: int):
  return nn.initializers.xavier_uniform()(key, (n_rows, dim), jnp.float32)


# ---- SimGCL --------------------------------------------------------------------------------
@flax.struct.dataclass
class UserItemGraph:
  op: prop.Operator  # the user-item graph, D^-1/2 A D^-1/2 without self loops
  n_users: int = flax.struct.field(pytree_node=False)
  n_items: int = flax.struct.field(pytree_node=False)


def simgcl_make_graphs(graphs, ds, config) -> UserItemGraph:
  del graphs, config  # SimGCL sees the interactions only, whatever the CIKG flags say
  n = ds.n_users + ds.n_items
  op = prop.make_operator(graph_lib.make_graph(n, graph_lib.user_item_pairs(ds), None))
  return UserItemGraph(op=op, n_users=ds.n_users, n_items=ds.n_items)


def simgcl_init_params(key, n_nodes: int, n_relations: int, config) -> Dict:
  del n_relations
  return {"embedding": _xavier_table(key, n_nodes, config.model.embed_dim)}


def layer_mean_without_input(op: prop.Operator, x, num_layers: int, backend: str,
                             perturb: Optional[Callable] = None):
  """SimGCL's encoder: the mean of layers 1..L, the layer-0 input excluded (SELFRec's and
  RecBole-GNN's SimGCL), each layer perturbed before it is propagated further."""
  e, total = x, 0.0
  for layer in range(num_layers):
    e = prop.spmm(op, op.weights, e, backend)
    if perturb is not None:
      e = perturb(layer, e)
    total = total + e
  return total / num_layers


def unique_rows(ids, mask, n: int):
  """The batch's distinct ids among its real rows, in a fixed-size (batch) vector: returns
  (ids, 0/1 mask); padding positions hold id 0 and mask 0."""
  ids = jnp.where(mask > 0, ids, n)
  uniq = jnp.unique(ids, size=ids.shape[0], fill_value=n)
  valid = uniq < n
  return jnp.where(valid, uniq, 0), valid.astype(jnp.float32)


def simgcl_final_embeddings(params, g: UserItemGraph, config):
  n = g.n_users + g.n_items
  out = layer_mean_without_input(g.op, params["embedding"][:n], config.model.num_layers,
                                 _backend(config))
  return out[:g.n_users], out[g.n_users:]


def simgcl_total_loss(params, g: UserItemGraph, batch, key, config) -> Tuple[jnp.ndarray, Dict]:
  """BPR + L2 on the batch's layer-0 rows + lambda * (user + item InfoNCE between two noisy
  views, over the batch's unique users and unique positive items)."""
  if "count" in batch:
    raise NotImplementedError("SimGCL runs on one device: its InfoNCE contrasts the whole "
                              "batch's unique rows, which shards would split")
  from cikg_jax import model  # (model imports this module lazily)
  backend, layers, s = _backend(config), config.model.num_layers, config.simgcl
  nu = g.n_users
  ego = params["embedding"][:nu + g.n_items]
  out = layer_mean_without_input(g.op, ego, layers, backend)
  users, pos, neg, mask = batch["users"], batch["pos"] + nu, batch["neg"] + nu, batch["mask"]
  bpr = losses.bpr_loss(out[users], out[pos], out[neg], mask, config.train.cf_weight)
  reg = losses.l2_reg((ego[users], ego[pos], ego[neg]), mask, config.train.l2)
  k1, k2 = jax.random.split(key)
  views = [losses.l2_normalize(layer_mean_without_input(
      g.op, ego, layers, backend, perturb=model.simgcl_noise(k, s.eps))) for k in (k1, k2)]
  u_ids, u_mask = unique_rows(batch["users"], mask, nu)
  i_ids, i_mask = unique_rows(batch["pos"], mask, g.n_items)
  cl_user = losses.paired_info_nce(views[0][u_ids], views[1][u_ids], u_mask, s.tau)
  cl_item = losses.paired_info_nce(views[0][nu + i_ids], views[1][nu + i_ids], i_mask, s.tau)
  cl = s.weight * (cl_user + cl_item)
  loss = bpr + reg + cl
  return loss, {"bpr": bpr, "reg": reg, "cl_user": cl_user, "cl_item": cl_item, "cl": cl,
                "loss": loss}


SIMGCL = Baseline(simgcl_make_graphs, simgcl_init_params, simgcl_total_loss,
                  simgcl_final_embeddings)


# ---- KGAT ----------------------------------------------------------------------------------
@flax.struct.dataclass
class KnowledgeGraph:
  """The collaborative knowledge graph as directed typed edges h <-r- t, sorted by the head h
  (the receiver; the tail t sends), and the (relation, node) rows attention projects."""
  op: prop.Operator
  relation: jnp.ndarray      # per edge, in the operator's edge order
  proj_nodes: jnp.ndarray    # node of each projection row, rows grouped by relation
  head_proj: jnp.ndarray     # per edge: projection row of (r, h)
  tail_proj: jnp.ndarray     # per edge: projection row of (r, t)
  proj_slices: Tuple[Tuple[int, int], ...] = flax.struct.field(pytree_node=False)
  n_users: int = flax.struct.field(pytree_node=False)
  n_items: int = flax.struct.field(pytree_node=False)


def kgat_triples(ds, use_kg: bool = True) -> Tuple[np.ndarray, int]:
  """(h, r, t) in node rows: user -interact-> item (relation R), KG triples (0..R-1), and every
  triple's inverse (relation r + R + 1), duplicates removed. Returns (triples, n_relations).
  Ids match sampling.kge_triples(ds, "paper"), so TransR trains the forward relations' rows."""
  r_interact = ds.n_relations
  n_rel = r_interact + 1
  ui = np.stack([ds.train[:, 0], np.full(len(ds.train), r_interact),
                 ds.train[:, 1] + ds.item_offset], axis=1)
  parts = [ui]
  if use_kg and len(ds.kg):
    parts.append(ds.kg + np.array([ds.item_offset, 0, ds.item_offset]))
  fwd = np.concatenate(parts).astype(np.int64)
  inv = np.stack([fwd[:, 2], fwd[:, 1] + n_rel, fwd[:, 0]], axis=1)
  return np.unique(np.concatenate([fwd, inv]), axis=0), 2 * n_rel


def kgat_make_graphs(graphs, ds, config) -> KnowledgeGraph:
  del graphs
  if config.views != "paper":
    raise ValueError("KGAT uses the paper views' TransE triples (views='paper')")
  triples, n_rel = kgat_triples(ds, config.model.use_kg_edges)
  n = ds.n_users + ds.n_entities
  h, r, t = triples.T
  order = np.lexsort((r, t, h))
  h, r, t = h[order], r[order], t[order]
  g = jraph.GraphsTuple(nodes=None, globals=None, senders=t.astype(np.int32),
                        receivers=h.astype(np.int32),
                        edges={"pair": np.arange(len(h), dtype=np.int32)},
                        n_node=np.array([n], np.int32), n_edge=np.array([len(h)], np.int32))
  keys = np.unique(np.concatenate([r * n + h, r * n + t]))
  bounds = np.searchsorted(keys, np.arange(n_rel + 1) * n)
  return KnowledgeGraph(
      op=prop.make_operator(g), relation=jnp.asarray(r, jnp.int32),
      proj_nodes=jnp.asarray(keys % n, jnp.int32),
      head_proj=jnp.asarray(np.searchsorted(keys, r * n + h), jnp.int32),
      tail_proj=jnp.asarray(np.searchsorted(keys, r * n + t), jnp.int32),
      proj_slices=tuple((int(bounds[k]), int(bounds[k + 1])) for k in range(n_rel)),
      n_users=ds.n_users, n_items=ds.n_items)


class BiInteraction(nn.Module):
  """KGAT's bi-interaction aggregator: LeakyReLU(W1 (e_h + e_N)) + LeakyReLU(W2 (e_h * e_N))."""
  features: int
  negative_slope: float = 0.2

  @nn.compact
  def __call__(self, ego, side):
    dense = lambda name: nn.Dense(self.features, kernel_init=nn.initializers.xavier_uniform(),
                                  name=name)
    act = lambda x: nn.leaky_relu(x, self.negative_slope)
    return act(dense("sum")(ego + side)) + act(dense("bi")(ego * side))


def kgat_init_params(key, n_nodes: int, n_relations: int, config) -> Dict:
  """Node table, relation vectors e_r and TransR matrices W_r for every relation and its
  inverse (2 * n_relations: sampling.kge_relation_count's forward relations, then inverses),
  and one bi-interaction layer per entry of kgat.layers."""
  dim, k_dim = config.model.embed_dim, config.kgat.relation_dim
  k_emb, k_rel, k_w, k_layers = jax.random.split(key, 4)
  n_rel = 2 * n_relations
  w_init = nn.initializers.xavier_uniform(in_axis=-2, out_axis=-1, batch_axis=(0,))
  params = {"embedding": _xavier_table(k_emb, n_nodes, dim),
            "relation": _xavier_table(k_rel, n_rel, k_dim),
            "w_r": w_init(k_w, (n_rel, dim, k_dim), jnp.float32), "layers": []}
  d_in = dim
  for i, features in enumerate(config.kgat.layers):
    x = jnp.zeros((1, d_in))
    layer = BiInteraction(features, config.kgat.negative_slope)
    params["layers"].append(layer.init(jax.random.fold_in(k_layers, i), x, x)["params"])
    d_in = features
  return params


def kgat_attention(params, g: KnowledgeGraph):
  """pi(h, r, t) = (W_r e_t)^T tanh(W_r e_h + e_r), softmax over each head's edges."""
  emb, w = params["embedding"], params["w_r"]
  proj = jnp.concatenate([emb[g.proj_nodes[s:e]] @ w[r]
                          for r, (s, e) in enumerate(g.proj_slices) if e > s])
  # tanh(W_r e_h + e_r) per (relation, node) row, not per edge: 7x fewer tanh on dbbook2014.
  rel = jnp.concatenate([jnp.broadcast_to(params["relation"][r], (e - s, proj.shape[1]))
                         for r, (s, e) in enumerate(g.proj_slices) if e > s])
  # The barrier materialises both tables: fused into the gathers, the concatenations became a
  # 2R-way select per gathered element (10x slower on CPU).
  proj, query = jax.lax.optimization_barrier((proj, jnp.tanh(proj + rel)))
  score = jnp.sum(proj[g.tail_proj] * query[g.head_proj], axis=-1)
  return jraph.segment_softmax(score, g.op.graph.receivers, g.op.n_nodes,
                               indices_are_sorted=True)


def kgat_propagate(params, g: KnowledgeGraph, config, dropout_key=None):
  """Concatenation of e^(0) and the L2-normalised outputs of the bi-interaction layers. As in
  KGAT's code the attention is a constant of the CF step (no gradient from BPR)."""
  att = jax.lax.stop_gradient(kgat_attention(params, g))
  ego = params["embedding"][:g.op.n_nodes]
  outs = [ego]
  c = config.kgat
  for i, features in enumerate(c.layers):
    side = prop.spmm(g.op, att, ego, _backend(config))
    ego = BiInteraction(features, c.negative_slope).apply({"params": params["layers"][i]},
                                                          ego, side)
    if dropout_key is not None and c.mess_dropout > 0:
      keep = jax.random.bernoulli(jax.random.fold_in(dropout_key, i), 1 - c.mess_dropout,
                                  ego.shape)
      ego = jnp.where(keep, ego / (1 - c.mess_dropout), 0.0)
    outs.append(losses.l2_normalize(ego))
  return jnp.concatenate(outs, axis=-1)


def kgat_final_embeddings(params, g: KnowledgeGraph, config):
  out = kgat_propagate(params, g, config)
  return out[:g.n_users], out[g.n_users:g.n_users + g.n_items]


def kgat_total_loss(params, g: KnowledgeGraph, batch, key, config) -> Tuple[jnp.ndarray, Dict]:
  """BPR on the concatenated representations + L2 on those same rows (KGAT's regulariser)."""
  out = kgat_propagate(params, g, config, dropout_key=key)
  nu = g.n_users
  u, i, j = out[batch["users"]], out[batch["pos"] + nu], out[batch["neg"] + nu]
  mask, count = batch["mask"], batch.get("count")
  bpr = losses.bpr_loss(u, i, j, mask, config.train.cf_weight, count)
  reg = losses.l2_reg((u, i, j), mask, config.train.l2, count)
  loss = bpr + reg
  return loss, {"bpr": bpr, "reg": reg, "loss": loss}


def kgat_kge_loss(params, batch, config):
  """TransR on the sampled (h, r, t) and on its inverse (t, r + R + 1, h), both against the
  sampled corrupted tail: KGAT trains every CKG relation, the inverses included, and the driver
  samples forward triples only."""
  emb = params["embedding"]
  n_fwd = params["relation"].shape[0] // 2
  h, r, t, neg = batch["head"], batch["relation"], batch["tail"], batch["neg_tail"]
  heads, rel = jnp.concatenate([h, t]), jnp.concatenate([r, r + n_fwd])
  tails, negs = jnp.concatenate([t, h]), jnp.concatenate([neg, neg])
  return losses.transr_loss(emb[heads], params["relation"][rel], emb[tails], emb[negs],
                            params["w_r"][rel], config.kge.l2)


KGAT = Baseline(kgat_make_graphs, kgat_init_params, kgat_total_loss, kgat_final_embeddings,
                kgat_kge_loss)


# ---- the table -----------------------------------------------------------------------------
MODELS = {"simgcl": SIMGCL, "kgat": KGAT}
NAMES = ("cikgrec", "lightgcn") + tuple(MODELS)  # the first two are cikg_jax/model.py itself


def get(config) -> Optional[Baseline]:
  """The baseline `config.model.name` names, or None for CIKGRec and LightGCN (model.py)."""
  name = config.model.get("name", "cikgrec")  # configs saved before the field: CIKGRec
  if name not in NAMES:
    raise ValueError(f"unknown config.model.name {name!r}; choose from {NAMES}")
  return MODELS.get(name)

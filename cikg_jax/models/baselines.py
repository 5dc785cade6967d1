"""Baselines trained by CIKGRec's driver (same sampler, evaluation, early stopping, checkpoints):
SimGCL (Yu et al., SIGIR 2022) and KGAT (Wang et al., KDD 2019), as Flax modules with the
methods of cikg_jax/models/cikgrec.py's (`__call__`, `loss`, `kge_loss`, `init_params`), so the training
library need not know which model it runs. Every baseline owns its graph pytree: SimGCL the
user-item graph, KGAT the collaborative knowledge graph with relation types. Node rows are the
framework's `[users | items = first entities | other entities | interests]`; the table is sized
for all of them, and a baseline uses only its leading rows (the rest get no gradient).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable, Dict, Optional, Tuple

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import jraph
import numpy as np

from cikg_jax.graphs import cikg as graph_lib
from cikg_jax.graphs import propagation as prop
from cikg_jax.models import losses
from cikg_jax.models.cikgrec import LightGCN, simgcl_noise, xavier


@dataclasses.dataclass(frozen=True)
class Entry:
  create: Callable  # (config, ds, common fields) -> the module
  make_graphs: Callable  # (graphs, ds, config) -> the graph pytree its methods take
  # (ds, config) -> the TransE/TransR sampler, where the model draws its own (KGAT)
  kge_sampler: Optional[Callable] = None


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


def unique_rows(ids, mask, n: int):
  """The batch's distinct ids among its real rows, in a fixed-size (batch) vector: returns
  (ids, 0/1 mask); padding positions hold id 0 and mask 0."""
  ids = jnp.where(mask > 0, ids, n)
  uniq = jnp.unique(ids, size=ids.shape[0], fill_value=n)
  valid = uniq < n
  return jnp.where(valid, uniq, 0), valid.astype(jnp.float32)


class SimGCL(LightGCN):
  """LightGCN's encoder without the layer-0 input in the mean, trained with BPR, L2 and
  InfoNCE between two noise-perturbed views of the batch's unique users and unique positive
  items (SELFRec's and RecBole-GNN's SimGCL)."""

  cl_weight: float = 0.5
  tau: float = 0.2
  eps: float = 0.1

  def init_params(self, key: jax.Array) -> Dict:
    return {
      "node_embedding": {"embedding": xavier(key, (self.n_nodes, self.embed_dim), jnp.float32)}
    }

  def encode(self, g: UserItemGraph, x, perturb=None):
    return prop.propagate(
      g.op, x, self.num_layers, None, self.backend, perturb=perturb, include_input=False
    )

  def __call__(self, g: UserItemGraph):
    out = self.encode(g, self.table()[: self.n_users + self.n_items])
    return out[: self.n_users], out[self.n_users :]

  def loss(self, g: UserItemGraph, batch, key, mask_rate=None, n_rows=None, share=1.0):
    del mask_rate, share
    if n_rows is not None:
      raise NotImplementedError(
        "SimGCL runs on one device: its InfoNCE contrasts the whole "
        "batch's unique rows, which shards would split"
      )
    nu = self.n_users
    ego = self.table()[: nu + self.n_items]
    out = self.encode(g, ego)
    users, pos, neg, mask = batch["users"], batch["pos"] + nu, batch["neg"] + nu, batch["mask"]
    bpr = losses.bpr_loss(out[users], out[pos], out[neg], mask, self.cf_weight)
    reg = losses.l2_reg((ego[users], ego[pos], ego[neg]), mask, self.l2)
    k1, k2 = jax.random.split(key)
    views = [losses.l2_normalize(self.encode(g, ego, simgcl_noise(k, self.eps))) for k in (k1, k2)]
    u_ids, u_mask = unique_rows(batch["users"], mask, nu)
    i_ids, i_mask = unique_rows(batch["pos"], mask, self.n_items)
    cl_user = losses.paired_info_nce(views[0][u_ids], views[1][u_ids], u_mask, self.tau)
    cl_item = losses.paired_info_nce(views[0][nu + i_ids], views[1][nu + i_ids], i_mask, self.tau)
    cl = self.cl_weight * (cl_user + cl_item)
    loss = bpr + reg + cl
    return loss, {
      "bpr": bpr,
      "reg": reg,
      "cl_user": cl_user,
      "cl_item": cl_item,
      "cl": cl,
      "loss": loss,
    }


def create_simgcl(config, ds, common) -> SimGCL:
  s = config.simgcl
  return SimGCL(
    **common,
    cf_weight=config.train.cf_weight,
    l2=config.train.l2,
    cl_weight=s.weight,
    tau=s.tau,
    eps=s.eps,
  )


# ---- KGAT ----------------------------------------------------------------------------------
@flax.struct.dataclass
class KnowledgeGraph:
  """The collaborative knowledge graph as directed typed edges h <-r- t, sorted by the head h
  (the receiver; the tail t sends), and the (relation, node) rows attention projects."""

  op: prop.Operator
  relation: jnp.ndarray  # per edge, in the operator's edge order
  proj_nodes: jnp.ndarray  # node of each projection row, rows grouped by relation
  head_proj: jnp.ndarray  # per edge: projection row of (r, h)
  tail_proj: jnp.ndarray  # per edge: projection row of (r, t)
  # KGAT's A_in: the attention of the epoch's CF steps (`KGAT.epoch_graphs` sets it), and its
  # start, the per-relation random-walk normalisation 1 / deg_r(h) of KGAT's `adj_type='si'`.
  attention: jnp.ndarray
  initial_attention: jnp.ndarray
  proj_slices: Tuple[Tuple[int, int], ...] = flax.struct.field(pytree_node=False)
  n_users: int = flax.struct.field(pytree_node=False)
  n_items: int = flax.struct.field(pytree_node=False)


def kgat_triples(ds, use_kg: bool = True) -> Tuple[np.ndarray, int]:
  """(h, r, t) in node rows: user -interact-> item (relation R), KG triples (0..R-1), and every
  triple's inverse (relation r + R + 1), duplicates removed. Returns (triples, n_relations).
  Ids match sampling.kge_triples(ds, "paper"), so TransR trains the forward relations' rows."""
  r_interact = ds.n_relations
  n_rel = r_interact + 1
  ui = np.stack(
    [ds.train[:, 0], np.full(len(ds.train), r_interact), ds.train[:, 1] + ds.item_offset], axis=1
  )
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
  g = jraph.GraphsTuple(
    nodes=None,
    globals=None,
    senders=t.astype(np.int32),
    receivers=h.astype(np.int32),
    edges={"pair": np.arange(len(h), dtype=np.int32)},
    n_node=np.array([n], np.int32),
    n_edge=np.array([len(h)], np.int32),
  )
  keys = np.unique(np.concatenate([r * n + h, r * n + t]))
  bounds = np.searchsorted(keys, np.arange(n_rel + 1) * n)
  initial = jnp.asarray(relational_random_walk_weights(h, r), jnp.float32)
  return KnowledgeGraph(
    op=prop.make_operator(g),
    relation=jnp.asarray(r, jnp.int32),
    proj_nodes=jnp.asarray(keys % n, jnp.int32),
    head_proj=jnp.asarray(np.searchsorted(keys, r * n + h), jnp.int32),
    tail_proj=jnp.asarray(np.searchsorted(keys, r * n + t), jnp.int32),
    attention=initial,
    initial_attention=initial,
    proj_slices=tuple((int(bounds[k]), int(bounds[k + 1])) for k in range(n_rel)),
    n_users=ds.n_users,
    n_items=ds.n_items,
  )


def relational_random_walk_weights(heads: np.ndarray, relations: np.ndarray) -> np.ndarray:
  """1 / deg_r(h) per edge (h, r, t): each relation's adjacency row-normalised on its own and the
  relations summed, KGAT's initial A_in (its loader's `_si_norm_lap`, the default `adj_type`)."""
  key = heads.astype(np.int64) * (int(relations.max(initial=0)) + 1) + relations
  _, inverse, counts = np.unique(key, return_inverse=True, return_counts=True)
  return 1.0 / counts[inverse].astype(np.float64)


class KGATTripleSampler:
  """TransR batches as KGAT's loader draws them (`_generate_train_A_batch`): a head uniformly
  among the CKG's heads, one of its triples (h, r, t) uniformly (inverse relations included), and
  a negative tail uniformly among all user and entity rows such that (h, r, t') is no CKG triple.
  len(triples) // batch_size + 1 batches per epoch, as its training loop."""

  def __init__(self, ds, batch_size: int):
    triples, _ = kgat_triples(ds, True)
    order = np.lexsort((triples[:, 2], triples[:, 1], triples[:, 0]))
    self.triples = triples[order]
    self.heads, self.starts, self.counts = np.unique(
      self.triples[:, 0], return_index=True, return_counts=True
    )
    self.n_nodes = ds.n_users + ds.n_entities
    self.n_rel = int(self.triples[:, 1].max()) + 1
    self._keys = self._key(self.triples[:, 0], self.triples[:, 1], self.triples[:, 2])
    self.batch_size = batch_size
    self.steps = len(self.triples) // batch_size + 1

  def _key(self, h, r, t):
    return (h.astype(np.int64) * self.n_rel + r) * self.n_nodes + t

  def is_triple(self, h, r, t) -> np.ndarray:
    keys = self._key(h, r, t)
    pos = np.minimum(np.searchsorted(self._keys, keys), len(self._keys) - 1)
    return self._keys[pos] == keys

  def epoch(self, seed: int, epoch: int) -> Dict[str, np.ndarray]:
    from cikg_jax.data import sampling

    rng = sampling.epoch_rng(seed, epoch, 1)
    shape = (self.steps, self.batch_size)
    head = rng.integers(len(self.heads), size=shape)
    pick = self.triples[self.starts[head] + rng.integers(self.counts[head])]
    h, r, t = pick[..., 0], pick[..., 1], pick[..., 2]
    neg = rng.integers(self.n_nodes, size=shape)
    bad = np.flatnonzero(self.is_triple(h, r, neg))
    while len(bad):  # rejection, as the original; every head has a non-neighbour
      neg.flat[bad] = rng.integers(self.n_nodes, size=len(bad))
      bad = bad[self.is_triple(h.flat[bad], r.flat[bad], neg.flat[bad])]
    return {
      "head": h.astype(np.int32),
      "relation": r.astype(np.int32),
      "tail": t.astype(np.int32),
      "neg_tail": neg.astype(np.int32),
    }


def load_pretrained_rows(path: str, n_users: int, n_items: int, dim: int) -> np.ndarray:
  """The user and item rows (n_users + n_items, dim) that initialise KGAT: KGAT's own pretraining
  file (an .npz with `user_embed` and `item_embed`, as its BPR-MF run saves them), or the run
  directory of this framework's BPR-MF / LightGCN run on the same dataset (its best parameters'
  layer-0 rows)."""
  if os.path.isfile(path) and path.endswith(".npz"):
    with np.load(path) as f:
      rows = np.concatenate([f["user_embed"], f["item_embed"]])
  elif os.path.isdir(os.path.join(path, "checkpoints")):
    import orbax.checkpoint as ocp

    from cikg_jax.training import checkpoint

    mgr = checkpoint.manager(path)
    step = mgr.latest_step()
    if step is None:
      raise ValueError(f"{path}: kgat.pretrain names a run without checkpoints")
    got = mgr.restore(step, args=ocp.args.Composite(best_params=ocp.args.StandardRestore()))
    rows = np.asarray(got.best_params["node_embedding"]["embedding"])[: n_users + n_items]
  else:
    raise ValueError(
      f"{path}: kgat.pretrain must be a run directory (with checkpoints/) or an .npz file with "
      "user_embed and item_embed"
    )
  if rows.shape != (n_users + n_items, dim):
    raise ValueError(
      f"{path}: pretrained rows have shape {rows.shape}, this dataset and model need "
      f"({n_users} users + {n_items} items, {dim})"
    )
  return rows.astype(np.float32)


class BiInteraction(nn.Module):
  """KGAT's bi-interaction aggregator: LeakyReLU(W1 (e_h + e_N)) + LeakyReLU(W2 (e_h * e_N))."""

  features: int
  negative_slope: float = 0.2

  @nn.compact
  def __call__(self, ego, side):
    dense = lambda name: nn.Dense(
      self.features,
      kernel_init=nn.initializers.xavier_uniform(),
      bias_init=kgat_bias_init,
      name=name,
    )
    act = lambda x: nn.leaky_relu(x, self.negative_slope)
    return act(dense("sum")(ego + side)) + act(dense("bi")(ego * side))


class KGAT(nn.Module):
  """KGAT: attentive propagation over the collaborative knowledge graph with bi-interaction
  layers, BPR on the concatenated layer outputs, TransR on the CKG triples."""

  n_users: int
  n_items: int
  n_nodes: int
  n_relations: int  # forward relations (sampling.kge_relation_count)
  embed_dim: int = 64
  num_layers: int = 3  # unused: the depth is len(layers)
  backend: str = "bcsr"
  relation_dim: int = 64
  layers: Tuple[int, ...] = (64, 32, 16)
  negative_slope: float = 0.2
  mess_dropout: float = 0.1
  cf_weight: float = 1.0
  l2: float = 1e-5
  kge_l2: float = 1e-5
  pretrain: str = ""  # load_pretrained_rows' path: user and item rows start from BPR-MF's

  def setup(self):
    n_rel = 2 * self.n_relations  # every relation and its inverse
    self.node_embedding = nn.Embed(
      self.n_nodes, self.embed_dim, embedding_init=kgat_node_init(self.n_users)
    )
    self.relation_embedding = nn.Embed(n_rel, self.relation_dim, embedding_init=xavier)
    self.w_r = self.param("w_r", W_R_INIT, (n_rel, self.embed_dim, self.relation_dim))
    self.aggregators = [BiInteraction(f, self.negative_slope) for f in self.layers]

  def init_params(self, key: jax.Array) -> Dict:
    """Keys as earlier runs drew them: table, relations, W_r, layers = split(key, 4), layer i
    from fold_in(layers key, i)."""
    dim, k_dim, n_rel = self.embed_dim, self.relation_dim, 2 * self.n_relations
    k_emb, k_rel, k_w, k_layers = jax.random.split(key, 4)
    params = {
      "node_embedding": {
        "embedding": kgat_node_init(self.n_users)(k_emb, (self.n_nodes, dim), jnp.float32)
      },
      "relation_embedding": {"embedding": xavier(k_rel, (n_rel, k_dim), jnp.float32)},
      "w_r": W_R_INIT(k_w, (n_rel, dim, k_dim), jnp.float32),
    }
    d_in = dim
    for i, features in enumerate(self.layers):
      x = jnp.zeros((1, d_in))
      params[f"aggregators_{i}"] = BiInteraction(features, self.negative_slope, parent=None).init(
        jax.random.fold_in(k_layers, i), x, x
      )["params"]
      d_in = features
    if self.pretrain:
      rows = load_pretrained_rows(self.pretrain, self.n_users, self.n_items, dim)
      table = params["node_embedding"]["embedding"]
      params["node_embedding"]["embedding"] = table.at[: len(rows)].set(rows)
    return params

  def epoch_graphs(self, g: KnowledgeGraph, refresh: bool) -> KnowledgeGraph:
    """The graph of an epoch's CF steps: KGAT refreshes A_in once per epoch, after TransR, from the
    parameters (`update_attentive_A`), and starts from the normalised adjacency (refresh False, the
    first epoch). So the attention of an epoch is a function of the parameters at its start: a
    resumed run recomputes it."""
    if not refresh:
      return g.replace(attention=g.initial_attention)
    return g.replace(attention=jax.lax.stop_gradient(self.attention(g)))

  def attention(self, g: KnowledgeGraph):
    """pi(h, r, t) = (W_r e_t)^T tanh(W_r e_h + e_r), softmax over each head's edges."""
    emb, w = self.node_embedding.embedding, self.w_r
    relation = self.relation_embedding.embedding
    proj = jnp.concatenate(
      [emb[g.proj_nodes[s:e]] @ w[r] for r, (s, e) in enumerate(g.proj_slices) if e > s]
    )
    # tanh(W_r e_h + e_r) per (relation, node) row, not per edge: 7x fewer tanh on dbbook2014.
    rel = jnp.concatenate(
      [
        jnp.broadcast_to(relation[r], (e - s, proj.shape[1]))
        for r, (s, e) in enumerate(g.proj_slices)
        if e > s
      ]
    )
    # The barrier materialises both tables: fused into the gathers, the concatenations became a
    # 2R-way select per gathered element (10x slower on CPU).
    proj, query = jax.lax.optimization_barrier((proj, jnp.tanh(proj + rel)))
    score = jnp.sum(proj[g.tail_proj] * query[g.head_proj], axis=-1)
    return jraph.segment_softmax(score, g.op.graph.receivers, g.op.n_nodes, indices_are_sorted=True)

  def propagate(self, g: KnowledgeGraph, dropout_key=None, att=None):
    """Concatenation of e^(0) and the L2-normalised outputs of the bi-interaction layers. As in
    KGAT's code the attention is a constant of the CF step (no gradient from BPR): the epoch's
    A_in in training, and for evaluation the attention of the current parameters (KGAT tests
    after its per-epoch refresh)."""
    if att is None:
      att = jax.lax.stop_gradient(self.attention(g))
    ego = self.node_embedding.embedding[: g.op.n_nodes]
    outs = [ego]
    for i, aggregate in enumerate(self.aggregators):
      side = prop.spmm(g.op, att, ego, self.backend)
      ego = aggregate(ego, side)
      if dropout_key is not None and self.mess_dropout > 0:
        keep = jax.random.bernoulli(
          jax.random.fold_in(dropout_key, i), 1 - self.mess_dropout, ego.shape
        )
        ego = jnp.where(keep, ego / (1 - self.mess_dropout), 0.0)
      outs.append(losses.l2_normalize(ego))
    return jnp.concatenate(outs, axis=-1)

  def __call__(self, g: KnowledgeGraph):
    out = self.propagate(g)
    return out[: self.n_users], out[self.n_users : self.n_users + self.n_items]

  def loss(self, g: KnowledgeGraph, batch, key, mask_rate=None, n_rows=None, share=1.0):
    """BPR on the concatenated representations + L2 on those same rows (KGAT's regulariser)."""
    del mask_rate, share
    out = self.propagate(g, dropout_key=key, att=g.attention)
    nu = self.n_users
    u, i, j = out[batch["users"]], out[batch["pos"] + nu], out[batch["neg"] + nu]
    mask = batch["mask"]
    bpr = losses.bpr_loss(u, i, j, mask, self.cf_weight, n_rows)
    reg = losses.l2_reg((u, i, j), mask, self.l2, n_rows)
    loss = bpr + reg
    return loss, {"bpr": bpr, "reg": reg, "loss": loss}

  def kge_loss(self, batch):
    """TransR on the sampled CKG triples (inverse relations among them, KGATTripleSampler)
    against their filtered corrupted tails."""
    emb, relation = self.node_embedding.embedding, self.relation_embedding.embedding
    h, r, t, neg = batch["head"], batch["relation"], batch["tail"], batch["neg_tail"]
    return losses.transr_loss(emb[h], relation[r], emb[t], emb[neg], self.w_r, r, self.kge_l2)


# The original's initialisers (tf.contrib.layers.xavier_initializer, Model/KGAT.py _build_weights):
# Glorot-uniform with TensorFlow's fans, which multiply a 3-d shape's leading dimensions into both
# fans: trans_W [n_relations, emb, kge] has the bound sqrt(6 / (2 n_relations emb)) (jax's
# variance_scaling without batch_axis computes the same fans); user_embed [n_users, emb] and
# entity_embed [n_entities, emb] are two tables, each with its own bound; the layers' biases
# b_gc, b_bi [1, out] are drawn as weights too (kgat_bias_init).
W_R_INIT = nn.initializers.xavier_uniform(in_axis=-2, out_axis=-1)


def kgat_bias_init(key, shape, dtype=jnp.float32):
  """The original's b_gc / b_bi: xavier_initializer([1, out]), i.e. U(+-sqrt(6 / (1 + out)))."""
  return xavier(key, (1, *shape), dtype).reshape(shape)


def kgat_node_init(n_users: int):
  """The node table as the original's two: user rows Glorot-uniform over (n_users, dim), the other
  rows (items and entities; here also the unused interest rows) over their own count."""

  def init(key, shape, dtype=jnp.float32):
    k_users, k_rest = jax.random.split(key)
    users = xavier(k_users, (n_users, shape[1]), dtype)
    rest = xavier(k_rest, (shape[0] - n_users, shape[1]), dtype)
    return jnp.concatenate([users, rest])

  return init


def create_kgat(config, ds, common) -> KGAT:
  from cikg_jax.data import sampling

  c = config.kgat
  return KGAT(
    **common,
    n_relations=sampling.kge_relation_count(ds, config.views),
    relation_dim=c.relation_dim,
    layers=tuple(c.layers),
    negative_slope=c.negative_slope,
    mess_dropout=c.mess_dropout,
    cf_weight=config.train.cf_weight,
    l2=config.train.l2,
    kge_l2=config.kge.l2,
    pretrain=c.get("pretrain", ""),
  )


MODELS = {
  "simgcl": Entry(create_simgcl, simgcl_make_graphs),
  "kgat": Entry(
    create_kgat,
    kgat_make_graphs,
    lambda ds, config: KGATTripleSampler(ds, config.kge.batch_size),
  ),
}

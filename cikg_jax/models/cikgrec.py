"""CIKGRec and its LightGCN core as Flax modules (docs/method.md §1-3).

A model's hyper-parameters are its fields. Every model (these two and the baselines of
baselines.py) has the same methods, called through `model.apply(variables, ..., method=...)`:

- `__call__(graphs)`: the final (users, items) embeddings used for ranking;
- `loss(graphs, batch, key, mask_rate, n_rows, share)`: the training objective of one
  mini-batch and its terms;
- `kge_loss(batch)`: the TransE (KGAT: TransR) objective of one triple batch;
- `init_params(key)`: the parameters, drawn from explicit keys (see its docstring).

`steps.create_model(config, ds)` maps a config to the fields; the modules know neither
ml_collections nor the Dataset.

Every operation on a whole node-table-shaped array (row lookups and writes, random draws of its
shape, propagation, InfoNCE against a range of its rows) goes through the `layout` field: `Dense`
(one (n, d) array, the default and the single-device numerics) or, in the "graph" parallel modes,
graph_parallel.RowSharded (this device's row block inside jax.shard_map, with collectives).

The graph pytree (`Graphs` here, the baselines' own in baselines.py) is an argument, not a field
or a closure constant, so large edge arrays are not baked into the compiled program.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Optional, Tuple

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from cikg_jax.graphs import propagation as prop
from cikg_jax.models import losses

xavier = nn.initializers.xavier_uniform()


@dataclasses.dataclass(frozen=True)
class Dense:
  """The node table as one (n, d) array: these are the operations the models do on it, written
  out as the single-device code always did. graph_parallel.RowSharded implements the same
  interface over the row block of one device of a mesh."""

  def table_rows(self, n_nodes: int) -> int:
    """Rows of the node table this layout holds."""
    return n_nodes

  def take(self, x, ids):
    return x[ids]

  def put(self, x, ids, values):
    return x.at[ids].set(values)

  def uniform(self, key, x):
    """U[0, 1) draws of x's shape: jax.random.uniform's values (propagation.uniform)."""
    return prop.uniform(key, x.shape)

  def bernoulli(self, key, p, x):
    """jax.random.bernoulli(key, p, x.shape)'s values, through propagation.uniform."""
    return prop.uniform(key, x.shape) < jnp.asarray(p, jnp.float32)

  def dropped_weights(self, op, key, rate: float):
    """Edge weights after dropping undirected pairs at `rate`, degrees renormalised."""
    return prop.normalized_weights(op, prop.edge_keep_mask(op, key, rate))

  def propagate(self, op, x, num_layers: int, weights=None, backend="bcsr", perturb=None):
    return prop.propagate(op, x, num_layers, weights, backend, perturb)

  def info_nce(
    self, anchors, table, lo: int, hi: Optional[int], positive, mask, tau, count=None, chunk=0
  ):
    """losses.info_nce of `anchors` against the rows lo:hi of `table` (`positive` indexes them);
    over chunks of `chunk` candidate rows when it is positive."""
    if chunk:
      return losses.info_nce_chunked(anchors, table[lo:hi], positive, mask, tau, count, chunk)
    return losses.info_nce(anchors, table[lo:hi], positive, mask, tau, count)


DENSE = Dense()


@flax.struct.dataclass
class Graphs:
  """CIKGRec's graphs: the operators its terms propagate over (keys of graph.build_graphs, plus
  `views` when stacked) and the node rows the reconstruction may mask."""

  ops: Dict[str, prop.Operator]
  interest_rows: jnp.ndarray
  n_users: int = flax.struct.field(pytree_node=False)
  n_items: int = flax.struct.field(pytree_node=False)
  n_nodes: int = flax.struct.field(pytree_node=False)


@dataclasses.dataclass(frozen=True)
class Contrastive:
  """Cross-domain InfoNCE between the CF view (with SimGCL noise) and the interest / KG views."""

  weight: float = 0.0
  tau: float = 0.2
  eps: float = 0.1
  # > 0: the InfoNCE denominators over chunks of this many candidate rows
  # (losses.chunked_exp_sum): memory (batch x chunk) instead of (batch x candidates)
  chunk: int = 0


@dataclasses.dataclass(frozen=True)
class Reconstruction:
  """GraphMAE-style masked reconstruction of the interest nodes."""

  weight: float = 0.0
  enc_layers: int = 2
  dec_layers: int = 1
  replace_rate: float = 0.15
  edge_drop: float = 0.2
  gamma: float = 2.0


@dataclasses.dataclass(frozen=True)
class TransE:
  use: bool = False
  l2: float = 1e-3


class LightGCN(nn.Module):
  """LightGCN trained with BPR and L2 on the batch's layer-0 rows, over a node table of
  `n_nodes` rows whose first `n_users` are users and next `n_items` items."""

  n_users: int
  n_items: int
  n_nodes: int
  embed_dim: int = 64
  num_layers: int = 3
  backend: str = "bcsr"  # prop.BACKENDS
  edge_dropout: float = 0.0
  message_dropout: float = 0.0
  cf_weight: float = 1.0
  l2: float = 1e-5
  layout: Any = DENSE  # Dense, or graph_parallel.RowSharded inside shard_map

  def setup(self):
    rows = self.layout.table_rows(self.n_nodes)
    self.node_embedding = nn.Embed(rows, self.embed_dim, embedding_init=xavier)

  def init_params(self, key: jax.Array) -> Dict:
    """The parameters with the key split every run of this project has used (table, encoder-to-
    decoder, relations = split(key, 3)), so a seed reproduces committed results. Flax's own
    `init` would fold each module path into the key and draw other values; the structure is the
    same (tests/test_model.py checks it against `model.init`)."""
    k_emb, _, _ = jax.random.split(key, 3)
    return {
      "node_embedding": {"embedding": xavier(k_emb, (self.n_nodes, self.embed_dim), jnp.float32)}
    }

  def table(self) -> jnp.ndarray:
    return self.node_embedding.embedding

  def propagated(self, graphs: Graphs) -> jnp.ndarray:
    """The propagated node table (no dropout): the rows the final embeddings come from."""
    return self.layout.propagate(
      graphs.ops["cikg"], self.table(), self.num_layers, None, self.backend
    )

  def __call__(self, graphs: Graphs) -> Tuple[jnp.ndarray, jnp.ndarray]:
    out = self.propagated(graphs)
    return out[: self.n_users], out[self.n_users : self.n_users + self.n_items]

  def bpr_terms(self, graphs: Graphs, batch, k_edge, k_msg, n_rows=None) -> Dict[str, jnp.ndarray]:
    """BPR over the (dropout) propagated main graph and L2 on the batch's layer-0 rows."""
    lay = self.layout
    ego = self.table()
    op = graphs.ops["cikg"]
    x = ego
    if self.message_dropout > 0:
      p = self.message_dropout
      x = jnp.where(lay.bernoulli(k_msg, 1 - p, ego), ego / (1 - p), 0.0)
    weights = (
      lay.dropped_weights(op, k_edge, self.edge_dropout) if self.edge_dropout > 0 else op.weights
    )
    out = lay.propagate(op, x, self.num_layers, weights, self.backend)
    users, pos, neg = batch["users"], batch["pos"] + self.n_users, batch["neg"] + self.n_users
    mask = batch["mask"]
    rows = lambda t: (lay.take(t, users), lay.take(t, pos), lay.take(t, neg))
    return {
      "bpr": losses.bpr_loss(*rows(out), mask, self.cf_weight, n_rows),
      "reg": losses.l2_reg(rows(ego), mask, self.l2, n_rows),
    }

  def loss(self, graphs: Graphs, batch, key, mask_rate=None, n_rows=None, share=1.0):
    """(loss, terms) of one mini-batch. `n_rows`: real rows of the whole batch when this is a
    shard of it (the step computes it with a collective); `share`: this shard's part of terms
    that do not depend on the batch."""
    del mask_rate, share
    k_edge, k_msg, _, _ = jax.random.split(key, 4)
    terms = self.bpr_terms(graphs, batch, k_edge, k_msg, n_rows)
    terms["loss"] = terms["bpr"] + terms["reg"]
    return terms["loss"], terms


def simgcl_noise(key, eps: float, layout: Any = DENSE):
  """e += sign(e) * normalize(U[0, 1)) * eps after every layer, a fresh draw per layer."""

  def perturb(layer, e):
    u = layout.uniform(jax.random.fold_in(key, layer), e)
    return e + jnp.sign(e) * losses.l2_normalize(u) * eps

  return perturb


def choose_masked_rows(key, n_rows: int, mask_rate, replace_rate: float):
  """Fixed-shape choice of floor(p * n) rows (GraphMAE's int(p * n)): a random ranking,
  `rank < k`. Of the chosen, the last `replace_rate` share by rank is replaced by other interest
  rows, the rest gets the mask token. Returns (chosen, token, noise) boolean vectors."""
  ranks = jnp.argsort(jnp.argsort(prop.uniform(key, (n_rows,))))
  k = jnp.floor(mask_rate * n_rows + 1e-6).astype(jnp.int32)
  n_noise = jnp.floor(replace_rate * k).astype(jnp.int32)
  chosen = ranks < k
  token = ranks < (k - n_noise)
  return chosen, token, chosen & ~token


CL_VIEWS = ("cf", "interest", "kg")  # view 1 (perturbed), 2 (user anchors), 3 (item anchors)


class CIKGRec(LightGCN):
  """LightGCN over the CIKG plus the cross-domain contrastive loss, the masked interest
  reconstruction and TransE on the same node table (docs/method.md §3)."""

  n_relations: int = 0
  contrastive: Contrastive = Contrastive()
  reconstruction: Reconstruction = Reconstruction()
  transe: TransE = TransE()
  # Memory over recomputation (config.model.remat): the contrastive views' and the
  # reconstruction's propagations are rematerialised in the backward pass (jax.checkpoint), and
  # the views are normalised by l2_normalize_keeping_output, so that only their normalised
  # copies outlive the forward pass. Values are the same; gradients equal to float rounding.
  # It pays in the graph modes at scale (docs/scaling.md); on one device it saves little
  # (tests/test_remat.py).
  remat: bool = False

  def _remat(self, fn):
    return jax.checkpoint(fn) if self.remat else fn

  def setup(self):
    super().setup()
    if self.reconstruction.weight > 0:
      self.mask_token = self.param("mask_token", nn.initializers.zeros, (1, self.embed_dim))
      self.e2d = nn.Dense(self.embed_dim, kernel_init=xavier)  # as the release's Linear(d, d)
    if self.transe.use:
      self.relation_embedding = nn.Embed(self.n_relations, self.embed_dim, embedding_init=xavier)

  def init_params(self, key: jax.Array) -> Dict:
    k_emb, k_e2d, k_rel = jax.random.split(key, 3)
    params = super().init_params(key)
    d = self.embed_dim
    if self.reconstruction.weight > 0:
      params["mask_token"] = jnp.zeros((1, d), jnp.float32)
      params["e2d"] = nn.Dense(d, kernel_init=xavier, parent=None).init(k_e2d, jnp.zeros((1, d)))[
        "params"
      ]
    if self.transe.use:
      params["relation_embedding"] = {
        "embedding": xavier(k_rel, (self.n_relations, d), jnp.float32)
      }
    return params

  # ---- masked user-interest reconstruction ------------------------------------------------
  def uir_loss(self, graphs: Graphs, key, mask_rate):
    """Scaled cosine error of the decoded masked interest rows, and how many rows were masked."""
    c = self.reconstruction
    lay = self.layout
    ego = self.table()
    rows = graphs.interest_rows
    k_choose, k_noise, k_drop = jax.random.split(key, 3)
    chosen, token, noise = choose_masked_rows(k_choose, rows.shape[0], mask_rate, c.replace_rate)
    donors = rows[jax.random.randint(k_noise, rows.shape, 0, rows.shape[0])]
    original = lay.take(ego, rows)
    masked = jnp.where(
      token[:, None], self.mask_token, jnp.where(noise[:, None], lay.take(ego, donors), original)
    )
    x = lay.put(ego, rows, masked)
    if c.edge_drop > 0:
      # Drop edges of the CIKG, then add self loops (added loops are never dropped); the decoder
      # runs on the same dropped graph, as the release's does.
      op = graphs.ops["cikg_with_loops"]
      w = lay.dropped_weights(op, k_drop, c.edge_drop)
    else:
      op = graphs.ops["cikg_no_loops"]
      w = op.weights
    enc = self._remat(lambda x, w: lay.propagate(op, x, c.enc_layers, w, self.backend))(x, w)
    h = self.e2d(enc)
    h = lay.put(h, rows, jnp.where(chosen[:, None], 0.0, lay.take(h, rows)))
    dec = self._remat(lambda h, w: lay.propagate(op, h, c.dec_layers, w, self.backend))(h, w)
    err = losses.scaled_cosine_error(
      lay.take(dec, rows), original, chosen.astype(jnp.float32), c.gamma
    )
    return err, jnp.sum(chosen)

  # ---- cross-domain contrastive learning --------------------------------------------------
  def view_embeddings(self, graphs: Graphs, key):
    """The three propagated views of the node table (view 1 with SimGCL noise), unnormalised.

    With the stacked operator (`ops["views"]`, `with_stacked_views`) the views travel as one
    (3n, d) array and each layer is one sparse product; the noise is drawn for view 1's n rows
    with the same keys, so the values equal the three separate propagations'."""
    lay = self.layout
    ego = self.table()
    layers = self.num_layers
    noise = simgcl_noise(key, self.contrastive.eps, lay)
    if "views" not in graphs.ops:
      return self._remat(
        lambda ego: (
          lay.propagate(graphs.ops["cf"], ego, layers, None, self.backend, perturb=noise),
          lay.propagate(graphs.ops["interest"], ego, layers, None, self.backend),
          lay.propagate(graphs.ops["kg"], ego, layers, None, self.backend),
        )
      )(ego)
    n = graphs.n_nodes
    perturb = lambda layer, e: jnp.concatenate([noise(layer, e[:n]), e[n:]])
    out = prop.propagate(
      graphs.ops["views"],
      jnp.concatenate([ego] * len(CL_VIEWS)),
      layers,
      None,
      self.backend,
      perturb=perturb,
    )
    return out[:n], out[n : 2 * n], out[2 * n :]

  def cl_loss(self, graphs: Graphs, batch, key, n_rows=None):
    """(user term, item term): the batch's users against all users of the interest view, its
    positive items against all item/entity/interest rows of the KG view."""
    lay = self.layout
    # with remat the views' unnormalised copies are not kept for the backward pass either
    normalize = losses.l2_normalize_keeping_output if self.remat else losses.l2_normalize
    z1, z2, z3 = map(normalize, self.view_embeddings(graphs, key))
    users, pos, mask = batch["users"], batch["pos"], batch["mask"]
    nu, tau, chunk = self.n_users, self.contrastive.tau, self.contrastive.chunk
    user_term = lay.info_nce(lay.take(z1, users), z2, 0, nu, users, mask, tau, n_rows, chunk)
    item_term = lay.info_nce(lay.take(z1, nu + pos), z3, nu, None, pos, mask, tau, n_rows, chunk)
    return user_term, item_term

  # ---- the objectives ---------------------------------------------------------------------
  def loss_parts(self) -> Tuple[str, ...]:
    """The loss's independent parts (each with its own PRNG key): BPR + L2 ("rec"), the
    contrastive term ("cl") and the reconstruction ("uir"), those with a weight."""
    return (
      ("rec",)
      + (("cl",) if self.contrastive.weight > 0 else ())
      + (("uir",) if self.reconstruction.weight > 0 else ())
    )

  def loss(self, graphs: Graphs, batch, key, mask_rate=None, n_rows=None, share=1.0, parts=None):
    """L = L_rec + L_CL + L_UIR for one mini-batch; returns (loss, terms). `parts`: a subset of
    `loss_parts()` (the split step's programs, steps.gradient_part_step), their terms and sum
    with the same keys and values as in the whole loss."""
    k_edge, k_msg, k_cl, k_uir = jax.random.split(key, 4)
    loss, terms = None, {}
    for part in self.loss_parts() if parts is None else parts:
      if part == "rec":
        terms.update(self.bpr_terms(graphs, batch, k_edge, k_msg, n_rows))
        value = terms["bpr"] + terms["reg"]
      elif part == "cl":
        user_term, item_term = self.cl_loss(graphs, batch, k_cl, n_rows)
        terms["cl_user"], terms["cl_item"] = user_term, item_term
        value = terms["cl"] = self.contrastive.weight * (user_term + item_term)
      elif part == "uir":
        err, n_masked = self.uir_loss(graphs, k_uir, mask_rate)
        # UIR does not depend on the batch: each of n data-parallel shards carries 1/n of it.
        value = terms["uir"] = self.reconstruction.weight * err * share
        terms["uir_masked_rows"] = n_masked.astype(jnp.float32) * share
      else:
        raise ValueError(f"unknown loss part {part!r}; the parts are {self.loss_parts()}")
      loss = value if loss is None else loss + value
    terms["loss"] = loss
    return loss, terms

  def kge_loss(self, batch):
    emb, rel, take = self.table(), self.relation_embedding.embedding, self.layout.take
    return losses.transe_loss(
      take(emb, batch["head"]),
      rel[batch["relation"]],
      take(emb, batch["tail"]),
      take(emb, batch["neg_tail"]),
      self.transe.l2,
    )


def with_stacked_views(graphs: Graphs) -> Graphs:
  """`graphs` plus `ops["views"]`: the three views as one block-diagonal operator over a 3n node
  layout, so cl_loss propagates them with one sparse product per layer (same values bit for bit).
  Opt-in: on this project's CPU it was no faster (0.65x on dbbook2014, 1.07x on book-crossing,
  README "Speed"), so make_graphs does not build it."""
  stacked = prop.stack_graphs([graphs.ops[v].graph for v in CL_VIEWS])
  return graphs.replace(ops={**graphs.ops, "views": prop.make_operator(stacked)})

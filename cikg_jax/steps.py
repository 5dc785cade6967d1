"""The training library: data, model and graphs for a config, the train state, the one train step,
the TransE step and the final-embedding function. Training (train.py), data parallelism
(parallel.py), prediction (predict.py) and the benchmarks (experiments/bench.py) all build on these.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Callable, Optional, Tuple

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from cikg_jax import baselines, model, rundir, schedules
from cikg_jax import graph as graph_lib
from cikg_jax import propagation as prop
from cikg_jax.data import dataset as dataset_lib
from cikg_jax.data import sampling

log = logging.getLogger(__name__)


# ---- config -> model, data -> graphs ---------------------------------------------------------
NAMES = ("cikgrec", "lightgcn") + tuple(baselines.MODELS)


def model_name(config) -> str:
  name = config.model.get("name", "cikgrec")  # configs saved before the field: CIKGRec
  if name not in NAMES:
    raise ValueError(f"unknown config.model.name {name!r}; choose from {NAMES}")
  return name


PARALLEL_MODES = ("data", "graph", "data_graph")  # config.parallel.mode (README "Several devices")


def parallel_settings(config) -> Tuple[str, int, int]:
  """(mode, requested device count, requested "data" axis size) of a config: `config.parallel`,
  or for configs from before it, `train.num_devices` (data parallelism). Missing keys take the
  values that reproduce runs from before them (rundir.ADDED_KEYS)."""
  flat = rundir.canonical(rundir._flat(rundir.plain(config)))
  legacy = config.get("train", {}).get("num_devices")
  new = config.get("parallel", {}).get("num_devices")
  default = rundir.ADDED_KEYS["parallel.num_devices"]
  if legacy not in (None, default) and new not in (None, default, legacy):
    raise ValueError(
      f"train.num_devices={legacy} and parallel.num_devices={new}: train.num_devices is the "
      "old name of parallel.num_devices; set only parallel.num_devices"
    )
  mode = flat["parallel.mode"]
  if mode not in PARALLEL_MODES:
    raise ValueError(f"unknown parallel.mode {mode!r}; choose from {PARALLEL_MODES}")
  return mode, int(flat["parallel.num_devices"]), int(flat["parallel.data_devices"])


def create_model(config, ds) -> nn.Module:
  """The module `config.model.name` names, its fields taken from the config and the data's
  sizes (as ogbg_molpcba's create_model)."""
  name = model_name(config)
  m = config.model
  common = dict(
    n_users=ds.n_users,
    n_items=ds.n_items,
    n_nodes=ds.n_nodes,
    embed_dim=m.embed_dim,
    num_layers=m.num_layers,
    backend=prop.resolve_backend(m.backend),
  )
  if name in baselines.MODELS:
    return baselines.MODELS[name].create(config, ds, common)
  common.update(
    edge_dropout=m.edge_dropout,
    message_dropout=m.message_dropout,
    cf_weight=config.train.cf_weight,
    l2=config.train.l2,
  )
  if name == "lightgcn":
    return model.LightGCN(**common)
  return model.CIKGRec(
    **common,
    n_relations=sampling.kge_relation_count(ds, config.views),
    contrastive=model.Contrastive(
      config.cl.weight, config.cl.tau, config.cl.eps, int(config.cl.get("chunk", 0))
    ),
    reconstruction=model.Reconstruction(
      config.uir.weight,
      config.uir.enc_layers,
      config.uir.dec_layers,
      config.uir.replace_rate,
      config.uir.edge_drop,
      config.uir.gamma,
    ),
    transe=model.TransE(bool(config.kge.use), config.kge.l2),
    remat=bool(config.model.get("remat", False)),
  )


def make_graphs(graphs, ds, config):
  """The graph pytree the configured model takes: operators for the graphs its terms need. In the
  graph-parallel modes they stay in host memory: no device holds a whole graph
  (graph_parallel.GraphParallel places each device's part)."""
  name = model_name(config)
  on_device = parallel_settings(config)[0] == "data"
  if name in baselines.MODELS:
    return baselines.MODELS[name].make_graphs(graphs, ds, config)
  needed = ["cikg"]
  if name == "cikgrec" and config.uir.weight > 0:
    needed += ["cikg_with_loops", "cikg_no_loops"]
  if name == "cikgrec" and config.cl.weight > 0:
    needed += list(model.CL_VIEWS)
  built = {}  # aliased graphs (e.g. cikg is cikg_with_loops) share one operator
  ops = {}
  for g_name in needed:
    g = graphs[g_name]
    if id(g) not in built:
      built[id(g)] = prop.make_operator(g, on_device)
    ops[g_name] = built[id(g)]
  if config.views == "release" and len(ds.user_interest):
    # The release masks the whole interest id range, isolated rows included (docs/method.md §6):
    # min..max id (544 / 245 / 550 rows), not the unused ids between the entities and the first.
    ids = ds.user_interest[:, 1]
    rows = ds.n_users + np.arange(ids.min(), ids.max() + 1)
  else:
    rows = ds.n_users + ds.connected_interest_ids()
  return model.Graphs(
    ops=ops,
    interest_rows=jnp.asarray(rows, jnp.int32) if on_device else np.asarray(rows, np.int32),
    n_users=ds.n_users,
    n_items=ds.n_items,
    n_nodes=ds.n_nodes,
  )


def effective_config(config, ds):
  """Switches off terms the data cannot support, loudly."""
  config = ml_collections.ConfigDict(config.to_dict())
  if config.kge.use and not (ds.has_kg and config.model.use_kg_edges):
    log.warning("no KG triples/edges: TransE (kge.use) switched off")
    config.kge.use = False
  if config.uir.weight > 0 and (ds.n_interests == 0 or not config.model.use_interest_edges):
    log.warning("no interest nodes: interest reconstruction (uir.weight) switched off")
    config.uir.weight = 0.0
  return config


# Copies of the node table a run holds: parameters, Adam's two moments, TransE's two, the best
# epoch's parameters.
TABLE_COPIES = 6


def check_table_size(ds, config, memory_bytes: Optional[int] = None) -> None:
  """Refuses a node table that could not fit in this machine's memory, before it is allocated:
  the ids were checked against the files, so such a size is the data's own, and the message says
  what sizes it."""
  if memory_bytes is None:
    memory_bytes = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
  dim = config.model.embed_dim
  need = ds.n_nodes * dim * 4 * TABLE_COPIES
  if need > memory_bytes:
    raise ValueError(
      f"{ds.path}: the node table ({ds.n_users:,} users + {ds.n_entities:,} entities + "
      f"{ds.n_interests:,} interest rows = {ds.n_nodes:,} rows x model.embed_dim={dim}) would "
      f"need about {need / 2**30:.1f} GiB with its optimizer state, more than this machine's "
      f"{memory_bytes / 2**30:.1f} GiB; check the data's ids, or lower model.embed_dim"
    )


def setup(config):
  """(dataset, effective config, model, graph pytree) for a config: what training, prediction
  and the benchmarks start from."""
  ds = dataset_lib.load_from_config(config)
  check_table_size(ds, config)
  graphs = graph_lib.build_graphs(
    ds,
    views=config.views,
    add_self_loops=config.model.add_self_loops,
    use_kg_edges=config.model.use_kg_edges,
    use_interest_edges=config.model.use_interest_edges,
  )
  config = effective_config(config, ds)
  return ds, config, create_model(config, ds), make_graphs(graphs, ds, config)


# ---- the train state and its steps -----------------------------------------------------------
@flax.struct.dataclass
class TrainState:
  step: jnp.ndarray  # train steps taken (TransE steps not counted)
  params: Any
  opt_state: Any
  kge_opt_state: Any


def make_optimizers(config):
  return optax.adam(config.train.lr), optax.adam(config.kge.lr)


def create_train_state(key, net: nn.Module, tx, kge_tx, use_kge: bool) -> TrainState:
  params = net.init_params(key)
  return TrainState(
    step=jnp.zeros((), jnp.int32),
    params=params,
    opt_state=tx.init(params),
    kge_opt_state=kge_tx.init(params) if use_kge else None,
  )


def mask_rates(config) -> np.ndarray:
  """The interest-reconstruction mask rate of every epoch (float32, as the step uses it)."""
  u = config.uir
  return np.array(
    [
      schedules.mask_rate(e, u.schedule, u.p0, u.pmax, u.total_epoch)
      for e in range(max(1, config.train.max_epochs))
    ],
    np.float32,
  )


def make_train_step(
  net: nn.Module, tx, rates: np.ndarray, steps_per_epoch: int, axis_name: Optional[str] = None
) -> Callable:
  """The one train step: a pure function (state, batch, key, graphs) -> (state, terms).

  The mask rate is read from the per-epoch schedule `rates` at epoch step // steps_per_epoch.
  With `axis_name` it runs data-parallel (parallel.py): each device holds a shard of the batch
  and the same key, state and graphs; the whole batch's real-row count comes from a `psum`, so
  the shards' gradients and terms sum to the whole batch's exactly."""
  rates = jnp.asarray(rates)

  def train_step(state: TrainState, batch, key, graphs):
    epoch = jnp.minimum(state.step // steps_per_epoch, rates.shape[0] - 1)
    n_rows, share = None, 1.0
    if axis_name is not None:
      n_rows = jax.lax.psum(jnp.sum(batch["mask"]), axis_name)
      share = 1.0 / jax.lax.psum(1, axis_name)

    def loss_fn(params):
      return net.apply(
        {"params": params}, graphs, batch, key, rates[epoch], n_rows, share, method="loss"
      )

    (_, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    if axis_name is not None:
      grads, terms = jax.lax.psum((grads, terms), axis_name)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), terms

  return train_step


def make_kge_step(net: nn.Module, kge_tx, axis_name: Optional[str] = None) -> Callable:
  """TransE step with its own Adam (docs/method.md §3.4); data-parallel over equal shards with
  `axis_name` (the loss is a plain mean, so the mean of shard gradients is exact)."""

  def kge_step(state: TrainState, batch):
    loss_fn = lambda p: net.apply({"params": p}, batch, method="kge_loss")
    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    if axis_name is not None:
      grads, loss = jax.lax.pmean((grads, loss), axis_name)
    updates, kge_opt_state = kge_tx.update(grads, state.kge_opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    return state.replace(params=params, kge_opt_state=kge_opt_state), {"kge": loss}

  return kge_step


def make_embed_fn(net: nn.Module) -> Callable:
  """Jitted (params, graphs) -> (users, items) final embeddings, for evaluation, prediction and
  the benchmarks."""
  return jax.jit(lambda params, graphs: net.apply({"params": params}, graphs))


def make_epoch_graphs_fn(net: nn.Module) -> Optional[Callable]:
  """(params, graphs, epoch) -> the graphs of that epoch's steps, for a model whose graph changes
  once per epoch (a `epoch_graphs(graphs, refresh)` method: KGAT's attention); None otherwise."""
  if not hasattr(net, "epoch_graphs"):
    return None
  fn = jax.jit(
    lambda params, g, refresh: net.apply({"params": params}, g, refresh, method="epoch_graphs"),
    static_argnums=2,
  )
  return lambda params, g, epoch: fn(params, g, epoch > 0)


def all_finite(tree) -> bool:
  """Host check (once per epoch, not per step): every leaf finite."""
  return all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree_util.tree_leaves(tree))


def param_count(params) -> int:
  return int(sum(x.size for x in jax.tree_util.tree_leaves(params)))

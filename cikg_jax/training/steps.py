"""The training library: data, model and graphs for a config, the train state, the one train step,
the TransE step and the final-embedding function. Training (train.py), data parallelism
(parallel.py), prediction (predict.py) and the benchmarks (experiments/bench.py) all build on these.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
from typing import Any, Callable, NamedTuple, Optional, Sequence, Tuple

import flax.linen as nn
import flax.struct
import jax
from jax import lax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from cikg_jax.data import dataset as dataset_lib
from cikg_jax.data import sampling
from cikg_jax.graphs import cikg as graph_lib
from cikg_jax.graphs import propagation as prop
from cikg_jax.models import baselines, cikgrec
from cikg_jax.training import config_migration, rundir, schedules

log = logging.getLogger(__name__)


# ---- config -> model, data -> graphs ---------------------------------------------------------
NAMES = ("cikgrec", "lightgcn") + tuple(baselines.MODELS)


def model_name(config) -> str:
  name = config.model.get("name", "cikgrec")  # configs saved before the field: CIKGRec
  if name not in NAMES:
    raise ValueError(f"unknown config.model.name {name!r}; choose from {NAMES}")
  return name


PARALLEL_MODES = ("data", "graph", "data_graph")  # config.parallel.mode (README "Several devices")


def parallel_settings(config) -> "ParallelSettings":
  """(mode, requested device count, requested "data" axis size, exchange, node order) of a config:
  `config.parallel`,
  or for configs from before it, `train.num_devices` (data parallelism). Missing keys take the
  values that reproduce runs from before them (config_migration.ADDED_KEYS)."""
  flat = config_migration.canonical(config_migration.flatten(rundir.plain(config)))
  legacy = config.get("train", {}).get("num_devices")
  new = config.get("parallel", {}).get("num_devices")
  default = config_migration.ADDED_KEYS["parallel.num_devices"]
  if legacy not in (None, default) and new not in (None, default, legacy):
    raise ValueError(
      f"train.num_devices={legacy} and parallel.num_devices={new}: train.num_devices is the "
      "old name of parallel.num_devices; set only parallel.num_devices"
    )
  mode = flat["parallel.mode"]
  if mode not in PARALLEL_MODES:
    raise ValueError(f"unknown parallel.mode {mode!r}; choose from {PARALLEL_MODES}")
  return ParallelSettings(
    mode,
    int(flat["parallel.num_devices"]),
    int(flat["parallel.data_devices"]),
    str(flat["parallel.exchange"]),
    str(flat["parallel.node_order"]),
  )


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
    return cikgrec.LightGCN(**common)
  return cikgrec.CIKGRec(
    **common,
    n_relations=sampling.kge_relation_count(ds, config.views),
    contrastive=cikgrec.Contrastive(
      config.cl.weight, config.cl.tau, config.cl.eps, int(config.cl.get("chunk", 0))
    ),
    reconstruction=cikgrec.Reconstruction(
      config.uir.weight,
      config.uir.enc_layers,
      config.uir.dec_layers,
      config.uir.replace_rate,
      config.uir.edge_drop,
      config.uir.gamma,
    ),
    transe=cikgrec.TransE(bool(config.kge.use), config.kge.l2),
    remat=bool(config.model.get("remat", False)),
  )


def make_graphs(graphs, ds, config, on_device: Optional[bool] = None):
  """The graph pytree the configured model takes: operators for the graphs its terms need. In the
  graph-parallel modes (`on_device` False; None: as config.parallel says) they stay in host
  memory: no device holds a whole graph (graph_parallel.GraphParallel places each device's
  part)."""
  name = model_name(config)
  if on_device is None:
    on_device = parallel_settings(config).mode == "data"
  if name in baselines.MODELS:
    return baselines.MODELS[name].make_graphs(graphs, ds, config)
  needed = ["cikg"]
  if name == "cikgrec" and config.uir.weight > 0:
    # the reconstruction's graph: with self loops when it drops edges, else without (uir_loss)
    needed.append("cikg_with_loops" if config.uir.edge_drop > 0 else "cikg_no_loops")
  if name == "cikgrec" and config.cl.weight > 0:
    needed += list(cikgrec.CL_VIEWS)
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
  return cikgrec.Graphs(
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


def setup(config, parallel: Optional["ParallelSettings"] = None):
  """(dataset, effective config, model, graph pytree) for a config: what training, prediction
  and the benchmarks start from. `parallel`: the config's parallel_settings, if known."""
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
  parallel = parallel_settings(config) if parallel is None else parallel
  on_device = parallel.mode == "data"
  return ds, config, create_model(config, ds), make_graphs(graphs, ds, config, on_device)


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


def epoch_schedule(per_epoch: np.ndarray, steps_per_epoch: int) -> Callable:
  """An optax-style schedule, step -> value, constant within an epoch: `per_epoch[step //
  steps_per_epoch]`, the last epoch's value past the end. Traceable (the step reads it from the
  train state's step count: data, not a new program) and callable on the host (the logger)."""
  table = jnp.asarray(per_epoch)

  def schedule(step):
    return table[jnp.minimum(step // steps_per_epoch, table.shape[0] - 1)]

  return schedule


class ParallelSettings(NamedTuple):
  mode: str  # PARALLEL_MODES
  num_devices: int  # requested; 0: every local device
  data_devices: int  # requested size of the "data" axis in "data_graph"; 0: chosen
  exchange: str = "all_gather"  # graph modes: how a device reads the rows it does not hold
  node_order: str = "identity"  # graph modes: the table's row order (graph_parallel.NodeOrder)


@dataclasses.dataclass(frozen=True)
class StepSettings:
  """What the steps and the loop read of a config, unpacked once (`step_settings`)."""

  parallel: ParallelSettings
  steps_per_epoch: int
  mask_rate: Callable  # optax-style schedule: train step -> interest mask rate
  use_kge: bool
  split_step: bool = False  # one program per loss part (split_train_step)


def step_settings(config, ds, parallel: Optional[ParallelSettings] = None) -> StepSettings:
  """The typed settings of an (effective) config for data `ds`."""
  steps_per_epoch = sampling.cf_batches(
    config.train.get("cf_sampling", "interactions"), len(ds.train), config.train.batch_size
  )
  return StepSettings(
    parallel=parallel_settings(config) if parallel is None else parallel,
    steps_per_epoch=steps_per_epoch,
    mask_rate=epoch_schedule(mask_rates(config), steps_per_epoch),
    use_kge=bool(config.kge.use),
    split_step=bool(config.train.get("split_step", False)),
  )


@dataclasses.dataclass(frozen=True)
class BatchShards:
  """The step's batch is one shard of the whole batch, split over the mapped axis `axis`: the
  shards' terms and gradients are summed (the TransE step's averaged) over it. How depends on the
  wrapper's autodiff: under `jax.pmap` each shard's gradient is its own and is reduced after
  autodiff; under `jax.shard_map` (check_vma) the loss is reduced inside the differentiated
  function and autodiff itself sums the replicated parameters' gradients, so a reduction after it
  would count them again (docs/method.md §7)."""

  axis: str
  reduce_in_loss: bool = False  # True under shard_map

  def in_loss(self, tree, reduce):
    return reduce(tree, self.axis) if self.reduce_in_loss else tree

  def after_grad(self, tree, reduce):
    return tree if self.reduce_in_loss else reduce(tree, self.axis)


def loss_and_gradients(
  net: nn.Module, mask_rate: Callable, shards, state: TrainState, batch, key, graphs, parts=None
):
  """The mini-batch loss's gradients and terms, the same for every mode: `net`'s layout says how
  the node table is held (cikgrec.Dense, or a device's row block, graph_parallel.RowSharded),
  `shards` (BatchShards or None) whether `batch` is a shard of the whole batch. The mask rate is
  `mask_rate(state.step)`. With shards, the whole batch's real-row count comes from a `psum`, so
  the shards' gradients and terms sum to the whole batch's. `parts`: only these of the model's
  loss parts (None: the whole loss)."""
  n_rows, share = None, 1.0
  if shards is not None:
    n_rows = lax.psum(jnp.sum(batch["mask"]), shards.axis)
    share = 1.0 / lax.psum(1, shards.axis)
  rate = mask_rate(state.step)
  which = {} if parts is None else {"parts": parts}

  def loss_fn(params):
    out = net.apply(
      {"params": params}, graphs, batch, key, rate, n_rows, share, method="loss", **which
    )
    return out if shards is None else shards.in_loss(out, lax.psum)

  (_, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  if shards is not None:
    grads, terms = shards.after_grad((grads, terms), lax.psum)
  return grads, terms


def apply_gradients(tx, state: TrainState, grads) -> TrainState:
  """One optimizer update of the parameters from the loss's gradients."""
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  return state.replace(step=state.step + 1, params=params, opt_state=opt_state)


def train_step(
  net: nn.Module, tx, mask_rate: Callable, shards, state: TrainState, batch, key, graphs
):
  """The one train step: BPR mini-batch loss and its terms (`loss_and_gradients`), one
  optimizer update. Pure, and the same for every mode."""
  grads, terms = loss_and_gradients(net, mask_rate, shards, state, batch, key, graphs)
  return apply_gradients(tx, state, grads), terms


def gradient_part_step(
  net: nn.Module, mask_rate: Callable, shards, part: str, state, batch, key, graphs, acc=None
):
  """The split step's program for one loss part: its gradients added to `acc` (the parts before
  it; None for the first) and its terms. The parts' programs, then `apply_gradients`, make one
  train step whose peak memory is the largest part's instead of the whole loss's
  (config.train.split_step): the same terms; the gradient summed part by part, equal to the
  whole step's to float rounding."""
  grads, terms = loss_and_gradients(net, mask_rate, shards, state, batch, key, graphs, (part,))
  if acc is not None:
    grads = jax.tree_util.tree_map(jnp.add, acc, grads)
  return grads, terms


def split_train_step(part_steps: Sequence[Callable], update_step: Callable) -> Callable:
  """(state, batch, key, graphs) -> (state, terms) from wrapped (jit / shard_map) programs: each
  of `part_steps` (`gradient_part_step` of one part, the first without the accumulator) adds
  its part's gradient, `update_step` (`apply_gradients`) applies their sum. The terms are merged
  and the loss summed in the order of the whole loss, so they equal the whole step's."""

  def step(state, batch, key, graphs):
    acc, terms = None, {}
    for i, part_step in enumerate(part_steps):
      args = (state, batch, key, graphs) + ((acc,) if i else ())
      acc, part_terms = part_step(*args)
      loss = part_terms["loss"] if i == 0 else terms["loss"] + part_terms["loss"]
      terms = {**terms, **part_terms, "loss": loss}
    return update_step(state, acc), terms

  # the most compilations of one program (train.py counts the step's compilations)
  step._cache_size = lambda: max(p._cache_size() for p in (*part_steps, update_step))
  step.programs = (*part_steps, update_step)  # for memory reports (experiments/graph_memory.py)
  return step


def kge_step(net: nn.Module, kge_tx, shards, state: TrainState, batch):
  """The one TransE step, with its own Adam (docs/method.md §3.4); over equal shards of the
  triple batch with `shards` (the loss is a plain mean, so the mean of the shards' is exact)."""

  def loss_fn(params):
    loss = net.apply({"params": params}, batch, method="kge_loss")
    return loss if shards is None else shards.in_loss(loss, lax.pmean)

  loss, grads = jax.value_and_grad(loss_fn)(state.params)
  if shards is not None:
    grads, loss = shards.after_grad((grads, loss), lax.pmean)
  updates, kge_opt_state = kge_tx.update(grads, state.kge_opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  return state.replace(params=params, kge_opt_state=kge_opt_state), {"kge": loss}


def make_train_step(
  net: nn.Module, tx, mask_rate: Callable, shards: Optional[BatchShards] = None
) -> Callable:
  """`train_step` as (state, batch, key, graphs) -> (state, terms), for a mode to wrap (jax.jit
  here and in the benchmarks, jax.pmap in parallel.py, jax.shard_map in graph_parallel.py)."""
  return functools.partial(train_step, net, tx, mask_rate, shards)


def loss_parts(net: nn.Module) -> Tuple[str, ...]:
  """The model's independent loss parts (CIKGRec: rec, cl, uir); one part for the others."""
  return net.loss_parts() if hasattr(net, "loss_parts") else ("rec",)


def make_split_train_step(
  net: nn.Module, tx, mask_rate: Callable, shards: Optional[BatchShards] = None
) -> Callable:
  """`split_train_step` on one device: a jitted program per loss part (the accumulated gradient
  donated) and one for the update (the state donated)."""
  parts = [
    jax.jit(
      functools.partial(gradient_part_step, net, mask_rate, shards, part),
      donate_argnums=(4,) if i else (),
    )
    for i, part in enumerate(loss_parts(net))
  ]
  return split_train_step(parts, jax.jit(functools.partial(apply_gradients, tx), donate_argnums=0))


def make_kge_step(net: nn.Module, kge_tx, shards: Optional[BatchShards] = None) -> Callable:
  """`kge_step` as (state, batch) -> (state, {"kge": loss}), for a mode to wrap."""
  return functools.partial(kge_step, net, kge_tx, shards)


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

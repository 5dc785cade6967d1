"""Training driver: the epoch loop with early stopping on the selection split, per-epoch logging
(metrics.jsonl, TensorBoard, a log line), checkpoints and exact resume. The model, the train
state and the steps are the training library's (cikg_jax/training/steps.py)."""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import math
import os
import time
from typing import Any, Dict, List, NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from tqdm.auto import tqdm

from cikg_jax import evaluation, runtime
from cikg_jax.data import sampling
from cikg_jax.graphs import propagation as prop
from cikg_jax.models import baselines
from cikg_jax.parallel import data_parallel, distributed
from cikg_jax.training import checkpoint as ckpt
from cikg_jax.training import config_rules, rundir, steps

log = logging.getLogger(__name__)

EARLY_STOPPING, BUDGET = "early_stopping", "budget"  # LoopState.stop ("" = running)
# Without a progress bar (a log file, CI), a long epoch logs its progress at least this often.
PROGRESS_EVERY_SECONDS = 60.0


class EpochProgress:
  """A log line every PROGRESS_EVERY_SECONDS within an epoch (steps done of all), so that a log
  file shows a long epoch is alive."""

  def __init__(self, epoch: int):
    self.epoch, self.last = epoch, time.perf_counter()

  def __call__(self, phase: str, done: int, total: int) -> None:
    now = time.perf_counter()
    if now - self.last >= PROGRESS_EVERY_SECONDS:
      self.last = now
      log.info("epoch %d: %s step %d of %d", self.epoch, phase, done, total)


@dataclasses.dataclass
class LoopState:
  """What the loop carries from epoch to epoch; checkpointed as JSON with the train state."""

  epoch: int = -1  # last finished epoch
  best_score: float = -math.inf
  best_epoch: int = -1
  bad_epochs: int = 0
  best: Dict[str, Any] = dataclasses.field(default_factory=dict)  # metrics of the best epoch
  train_seconds: float = 0.0
  epoch_seconds: List[float] = dataclasses.field(default_factory=list)
  stop: str = ""  # EARLY_STOPPING, or BUDGET: a pause a rerun continues
  budget_seconds: float = 0.0  # the budget that paused the run (for the message)
  # The most compilations of the train step one invocation needed: a rerun that trains no epoch
  # (a finished run, a lost results.json) records the run's count, not its own 0.
  train_step_compilations: Optional[int] = None

  def to_json(self) -> Dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_json(cls, d: Dict[str, Any]) -> "LoopState":
    d = dict(d)
    if "stopped" in d:  # checkpoints written before this dataclass: a dict with string reasons
      reason = str(d.pop("stop_reason", ""))
      stopped = d.pop("stopped")
      d["stop"] = (
        BUDGET if reason.startswith("time budget") else (EARLY_STOPPING if stopped else "")
      )
    known = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in d.items() if k in known})


@dataclasses.dataclass(frozen=True)
class LoopSettings:
  """What the epoch loop reads of a config, unpacked once (`loop_settings`)."""

  seed: int
  batch_size: int
  cf_sampling: str  # "interactions" (sampling.bpr_epoch) or "users" (KGAT's)
  max_epochs: int
  min_epochs: int
  patience: int  # epochs without a better selection score before stopping
  max_seconds: float  # time budget of one invocation; 0: none
  checkpoint: bool
  checkpoint_every_seconds: float
  plot: bool
  ks: Tuple[int, ...]  # Recall/NDCG cut-offs
  select_k: int  # the cut-off of the selection score
  n_groups: int  # user-sparsity groups of the test metrics
  eval_chunk: int  # users scored at once


def loop_settings(config) -> LoopSettings:
  t, e = config.train, config.eval
  return LoopSettings(
    seed=int(config.seed),
    batch_size=int(t.batch_size),
    cf_sampling=str(t.get("cf_sampling", "interactions")),
    max_epochs=int(t.max_epochs),
    min_epochs=int(t.min_epochs),
    patience=int(t.patience),
    max_seconds=float(t.max_seconds or 0.0),
    checkpoint=bool(t.checkpoint),
    checkpoint_every_seconds=float(t.checkpoint_every_seconds),
    plot=bool(t.plot),
    ks=tuple(int(k) for k in e.ks),
    select_k=int(e.select_k),
    n_groups=int(e.n_groups),
    eval_chunk=int(e.chunk_size),
  )


# ---- evaluation ------------------------------------------------------------------------------
def make_eval_sets(ds, chunk_size: int) -> Dict[str, evaluation.EvalSet]:
  """Known items are excluded from ranking: training items, and for test also validation."""
  c = chunk_size
  sets = {
    "test": evaluation.make_eval_set(ds.test, [ds.train, ds.valid], ds.n_users, ds.n_items, c)
  }
  if ds.selection == "valid":
    sets["valid"] = evaluation.make_eval_set(ds.valid, [ds.train], ds.n_users, ds.n_items, c)
  return sets


def selection_score(metrics: Dict[str, float], k: int) -> float:
  return metrics[f"recall@{k}"] + metrics[f"ndcg@{k}"]


def evaluate(
  embeddings, eval_sets, selection: str, settings: LoopSettings, train_counts, loop: LoopState
) -> Dict[str, float]:
  """Scores the selection split and, when it improves, the test split with its user groups
  (both from the same propagation); updates the loop's early-stopping state."""
  ks = settings.ks
  sel_metrics, _ = evaluation.evaluate(*embeddings, eval_sets[selection], ks)
  score = selection_score(sel_metrics, settings.select_k)
  if score > loop.best_score:
    test_metrics, groups = evaluation.evaluate_groups(
      *embeddings, eval_sets["test"], ks, train_counts, settings.n_groups
    )
    loop.best = {
      "valid": {},
      selection: sel_metrics,
      "test": test_metrics,
      "test_groups": groups["quantile"],
      "test_groups_equal_interactions": groups["equal_interactions"],
    }
    loop.best_score, loop.best_epoch, loop.bad_epochs = score, loop.epoch, 0
  else:
    loop.bad_epochs += 1
  return dict(sel_metrics, selection_score=score)


# ---- one epoch -------------------------------------------------------------------------------
def _mean_terms(step_terms: List[Dict]) -> Dict[str, float]:
  if not step_terms:
    return {}
  stacked = jax.device_get(step_terms)
  return {k: float(np.mean([m[k] for m in stacked])) for k in stacked[0]}


def _check_finite(step_terms, key: str, epoch: int, what: str, workdir: str, mgr) -> None:
  """big_vision's host check: raises on the first non-finite logged loss of the epoch, naming
  the newest checkpoint (asked of orbax only then); nothing after it is saved."""
  values = np.asarray([m[key] for m in jax.device_get(step_terms)]).reshape(len(step_terms), -1)
  bad = np.flatnonzero(~np.isfinite(values).all(axis=1))
  if bad.size:
    _raise_non_finite(
      f"{what} loss at epoch {epoch}, step {int(bad[0])} of the epoch", workdir, mgr
    )


def _raise_non_finite(where: str, workdir: str, mgr) -> None:
  saved_epoch = ckpt.latest_step(mgr)
  if mgr is None:
    saved = "checkpointing is off (train.checkpoint=False), so no checkpoint exists"
  elif saved_epoch is None:
    saved = "no checkpoint has been saved yet"
  else:
    saved = (
      f"the latest checkpoint (end of epoch {saved_epoch}) is in "
      f"{os.path.join(workdir, 'checkpoints')}"
    )
  raise FloatingPointError(
    f"non-finite {where}: training stopped; {saved}. Lower the learning rate or check the data."
  )


@dataclasses.dataclass
class Trainer:
  """The wrapped steps and the host-side pieces of one run (one device, pmap or a mesh)."""

  train_step: Any  # (state, batch, key, graphs) -> (state, terms)
  kge_step: Any
  graphs: Any  # the graphs in the layout the steps and `embed` take
  kge_sampler: Optional[sampling.KGESampler]
  sampler: sampling.NegativeSampler
  place: Any  # host state -> device layout
  host_view: Any  # device layout -> host state
  shard: Any  # global batch -> this process's device layout
  n_devices: int  # data-parallel devices over all processes
  embed: Any = None  # (params, graphs) -> (users, items); None: steps.make_embed_fn
  mesh: Optional[Dict[str, int]] = None  # graph modes: {axis: size}
  # graph modes: the node order's name and its blocks' edges, halo and padding (partition.json)
  partition: Optional[Dict[str, Any]] = None
  # (state, graphs, epoch) -> the graphs of the epoch's steps, for models whose graph changes once
  # per epoch (KGAT's attention); None: the same graphs every epoch.
  epoch_graphs: Any = None


def make_samplers(config, ds, use_kge: bool) -> Dict[str, Any]:
  """The epoch's BPR sampler and, with TransE, its triple sampler (the model's own if it has
  one): Trainer fields."""
  kge_sampler = None
  if use_kge:
    entry = baselines.MODELS.get(steps.model_name(config))
    kge_sampler = (
      entry.kge_sampler(ds, config)
      if entry is not None and entry.kge_sampler is not None
      else sampling.KGESampler(ds, config.views, config.kge.batch_size)
    )
  return dict(
    kge_sampler=kge_sampler, sampler=sampling.NegativeSampler(ds.train, ds.n_users, ds.n_items)
  )


def make_trainer(
  net, graphs, settings: steps.StepSettings, tx, kge_tx, samplers, workdir: Optional[str] = None
) -> Trainer:
  """The one train step and TransE step (steps.py) wrapped for the settings' parallel mode:
  jax.jit on one device, jax.pmap data parallelism ("data"), or jax.shard_map over a graph /
  data x graph mesh with the row-sharded layout (graph_parallel.py). `samplers`: make_samplers.
  `workdir`: the run's directory, which holds a graph mode's node order (None: chosen, not
  stored)."""
  mode, requested, data_devices, exchange, node_order = settings.parallel
  n_devices = data_parallel.num_devices(requested)  # this process's
  if mode != "data":
    from cikg_jax.parallel import graph_parallel as gp

    # one mesh over every process's devices; each process feeds the whole batch
    shape = gp.mesh_shape(mode, n_devices * distributed.process_count(), data_devices)
    gp.check_supported(net, graphs)
    order = gp.NodeOrder.for_run(
      workdir, graphs, node_order, shape[gp.GRAPH], write=distributed.is_primary()
    )
    par = gp.GraphParallel(net, graphs, gp.make_mesh(shape), exchange, order)
    template = gp.state_template(net, tx, kge_tx, settings.use_kge)
    if settings.split_step:
      step = par.make_split_train_step(tx, settings.mask_rate, template)
    else:
      step = par.make_train_step(tx, settings.mask_rate, template)
    return Trainer(
      train_step=step,
      graphs=par.graphs,
      kge_step=par.make_kge_step(kge_tx, template) if settings.use_kge else None,
      place=par.place,
      host_view=par.host_view,
      shard=par.shard_batch,
      n_devices=shape.get(gp.DATA, 1),
      embed=par.make_embed_fn(),
      mesh=shape,
      partition=par.partition_report(),
      **samplers,
    )
  if n_devices > 1 or distributed.process_count() > 1:
    if settings.split_step:
      raise ValueError(
        "train.split_step runs on one device or in the graph modes (parallel.mode=graph or "
        "data_graph), not in data-parallel mode across several devices"
      )
    train_step, kge_step = data_parallel.make_steps(
      net, tx, kge_tx, settings.mask_rate, settings.use_kge
    )
    return Trainer(
      train_step=train_step,
      kge_step=kge_step,
      graphs=graphs,
      # From host copies: the pmap refuses device arrays committed to one device, as orbax
      # restores them (a resumed run).
      place=lambda tree: data_parallel.replicate(jax.device_get(tree), n_devices),
      host_view=data_parallel.unreplicate,
      shard=lambda b: data_parallel.shard_batch(distributed.local_rows(b), n_devices),
      n_devices=n_devices * distributed.process_count(),
      epoch_graphs=_epoch_graphs(net, data_parallel.unreplicate),
      **samplers,
    )
  same = lambda tree: tree
  return Trainer(
    train_step=(
      steps.make_split_train_step(net, tx, settings.mask_rate)
      if settings.split_step
      else jax.jit(steps.make_train_step(net, tx, settings.mask_rate), donate_argnums=0)
    ),
    kge_step=(
      jax.jit(steps.make_kge_step(net, kge_tx), donate_argnums=0) if settings.use_kge else None
    ),
    graphs=graphs,
    place=same,
    host_view=same,
    shard=same,
    n_devices=1,
    epoch_graphs=_epoch_graphs(net, same),
    **samplers,
  )


def _partition_summary(p: Dict[str, Any]) -> str:
  blocks = p["blocks"]
  return (
    f"node order {p['node_order']}, {p['devices']} blocks of {p['operator']}: edges "
    f"{min(blocks['edges'])}-{max(blocks['edges'])} (max / mean {blocks['edge_imbalance']:.2f}), "
    f"largest halo {blocks['halo_max']} of {p['nodes']} rows, padding {max(blocks['padding'])}"
  )


def _epoch_graphs(net, host_view):
  fn = steps.make_epoch_graphs_fn(net)
  return None if fn is None else lambda state, g, epoch: fn(host_view(state.params), g, epoch)


def run_epoch(
  trainer: Trainer,
  state,
  ds,
  settings: LoopSettings,
  epoch: int,
  root_key,
  workdir,
  mgr,
  progress=None,
):
  """The BPR mini-batches of one epoch, then its TransE batches; returns (state, mean terms).
  `progress(phase, done, total)`, if given, is told after each step."""
  graphs = trainer.graphs
  if trainer.epoch_graphs is not None:
    graphs = trainer.epoch_graphs(state, graphs, epoch)
  epoch_key = jax.random.fold_in(root_key, epoch + 1)
  batches = sampling.CF_EPOCHS[settings.cf_sampling](
    ds.train, trainer.sampler, settings.batch_size, sampling.epoch_rng(settings.seed, epoch)
  )
  step_terms = []
  for b in range(batches["users"].shape[0]):
    batch = trainer.shard({k: v[b] for k, v in batches.items()})
    state, terms = trainer.train_step(state, batch, jax.random.fold_in(epoch_key, b), graphs)
    step_terms.append(terms)
    if progress is not None:
      progress("BPR", b + 1, batches["users"].shape[0])
  _check_finite(step_terms, "loss", epoch, "training", workdir, mgr)
  terms = _mean_terms(step_terms)
  if trainer.kge_step is not None:
    kbatches = trainer.kge_sampler.epoch(settings.seed, epoch)
    kge_terms = []
    for b in range(trainer.kge_sampler.steps):
      state, m = trainer.kge_step(state, trainer.shard({k: v[b] for k, v in kbatches.items()}))
      kge_terms.append(m)
      if progress is not None:
        progress("TransE", b + 1, trainer.kge_sampler.steps)
    _check_finite(kge_terms, "kge", epoch, "TransE", workdir, mgr)
    terms.update(_mean_terms(kge_terms))
  return state, terms


# ---- setup, resume and the loop --------------------------------------------------------------
def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> Dict[str, Any]:
  """Trains to early stop on the selection split and writes config.json, metrics.jsonl,
  tensorboard/, results.json (and checkpoints/, curves.png) into `workdir`; resumes if
  interrupted.

  The workdir is created only once the data has loaded, and a run in it is resumed only if its
  identity (config and data, rundir.RESUMABLE_KEYS aside) matches; train.resume=False deletes it
  and starts afresh. One training at a time holds the workdir's lock.

  With several processes (cikg_jax/parallel/distributed.py) every process calls this; process 0 alone
  checks, locks and writes the workdir, and no process trains unless every one set up."""
  config_rules.check(config)  # before anything is read, allocated or written
  parallel_settings = steps.parallel_settings(config)
  with contextlib.ExitStack() as held:
    try:
      if distributed.is_primary():
        prepared = _prepare(config, workdir, held, parallel_settings)
      else:
        rundir.check_workdir(workdir)
        t_setup = time.perf_counter()
        prepared = (*steps.setup(config, parallel_settings), t_setup)
    except Exception as e:
      distributed.agree(e, "setup")  # tells the other processes, then raises e
      raise
    ds, effective, net, graphs, t_setup = prepared
    same_run = lambda: distributed.fingerprint(config, rundir.data_digest(ds))
    distributed.agree(None, "setup", same_run)  # every process: the same config and data
    if parallel_settings.mode != "data":  # graph modes: whole tables on the host
      held.enter_context(jax.default_device(jax.local_devices(backend="cpu")[0]))
    return _train(effective, workdir, ds, net, graphs, t_setup, parallel_settings)


def _prepare(config, workdir: str, held: contextlib.ExitStack, parallel_settings):
  """Checks the workdir, loads the data, creates and locks the workdir (the lock joins `held`),
  clears or checks the run there and writes its identity: (dataset, effective config, model,
  graphs, setup start time)."""
  rundir.check_workdir(workdir)
  resume = config.train.get("resume", True)
  existed = os.path.isdir(workdir)
  if existed:  # refuse a busy workdir or another run at once, before loading data
    held.enter_context(rundir.locked(workdir))
    if resume:
      rundir.check_resume(workdir, config)
  requested = config
  t_setup = time.perf_counter()
  ds, config, net, graphs = steps.setup(requested, parallel_settings)
  data_sha256 = rundir.data_digest(ds)
  if not existed:  # created only now that the data has loaded
    os.makedirs(workdir, exist_ok=True)
    held.enter_context(rundir.locked(workdir))
  if resume:  # again: the data's digest, and a run another process may have begun meanwhile
    rundir.check_resume(workdir, requested, config, data_sha256)
  else:
    gone = rundir.clear(workdir)
    if gone:
      log.warning("train.resume=False: deleted %s in %s", ", ".join(gone), workdir)
  rundir.write_json(
    os.path.join(workdir, rundir.IDENTITY_FILE),
    {"config": rundir.plain(requested), "data_sha256": data_sha256},
  )
  rundir.write_json(os.path.join(workdir, "config.json"), _with_data_source(config, ds))
  return ds, config, net, graphs, t_setup


def _with_data_source(config, ds) -> Dict[str, Any]:
  """config.json records the data folder actually read (an empty data_dir means the environment
  variable at training time), so prediction finds the data without that environment."""
  saved = config.to_dict()
  if not saved.get("data_dir") and ds.path and not config.dataset.startswith("synthetic"):
    saved["data_dir"] = os.path.dirname(os.path.abspath(ds.path))
  return saved


def _restore(checkpoint: bool, workdir, state, best_params):
  """(manager, state, best params, loop state): from the newest good checkpoint whose epochs the
  metrics log holds, if any. Steps beyond the log (its lines torn or deleted) are replayed, so
  metrics.jsonl always holds exactly epochs 0..loop.epoch."""
  mgr = ckpt.manager(workdir) if checkpoint else None
  loop = LoopState()
  primary = distributed.is_primary()
  metrics_path = os.path.join(workdir, "metrics.jsonl")
  if mgr is not None:  # every process restores (orbax's multi-process protocol)
    quiet = lambda text: None
    lines = rundir.logged_epochs(metrics_path) if primary else []
    max_step = distributed.from_primary(len(lines) - 1, "logged epochs")
    restored = ckpt.restore_latest(
      mgr,
      state,
      best_params,
      delete_damaged=True,
      log=log.info if primary else quiet,
      max_step=max_step,
    )
    if restored is not None:
      state, best_params, loop_json = restored
      loop = LoopState.from_json(loop_json)
      if loop.stop == BUDGET:
        loop.stop = ""  # a budget stop is a pause: a rerun continues the run
      if primary:
        log.info("resumed from %s/checkpoints at epoch %d", workdir, loop.epoch)
    if primary:
      rundir.keep_epochs(metrics_path, lines, loop.epoch)
  elif primary:
    rundir.write_atomic(metrics_path, "")
  return mgr, state, best_params, loop


def summary_writer(workdir: str, **kwargs):
  """A tensorboardX writer on a file of its own: tensorboardX names event files by the second and
  host only, so a second writer opened within the same second would truncate the first's file."""
  from tensorboardX import SummaryWriter

  suffix = f".{os.getpid()}.{next(_EVENT_FILE_IDS)}"
  return SummaryWriter(os.path.join(workdir, "tensorboard"), filename_suffix=suffix, **kwargs)


_EVENT_FILE_IDS = itertools.count()


class EpochWriter:
  """Every epoch's terms and metrics: a line of metrics.jsonl (on disk before the checkpoint
  that claims it), TensorBoard scalars, and a log line when no progress bar is shown."""

  def __init__(self, workdir: str, log_lines: bool, k: int):
    self.metrics_path = os.path.join(workdir, "metrics.jsonl")
    self.log_lines = log_lines
    self.k = k  # the log line shows recall@k (eval.select_k)
    self.tb = None
    try:
      self.tb = summary_writer(workdir, flush_secs=30)
    except ImportError:
      log.warning("tensorboardX is not installed: no TensorBoard event files")

  def write(self, record: Dict[str, Any], selection: str) -> None:
    rundir.append_line(self.metrics_path, record)
    epoch = record["epoch"]
    if self.tb is not None:  # tensorboardX writes "@" in a tag as "_": valid/recall_20
      for k, v in record.items():
        if k != "epoch" and isinstance(v, (int, float)):
          self.tb.add_scalar(k, v, epoch)
    if self.log_lines:
      terms = " ".join(
        f"{k} {record[k]:.5g}" for k in ("loss", "bpr", "reg", "cl", "uir", "kge") if k in record
      )
      log.info(
        "epoch %d: %s | %s/recall@%d %.4f selection %.4f (best epoch %d) %.1f s",
        epoch,
        terms,
        selection,
        self.k,
        record[f"{selection}/recall@{self.k}"],
        record["selection_score"],
        record["best_epoch"],
        record["seconds"],
      )

  def close(self) -> None:
    """Never raises: the TensorBoard copy of the metrics may not hide the error that ends a run
    (a full disk fails its last flush too)."""
    if self.tb is not None:
      try:
        self.tb.close()
      except OSError as e:
        log.warning(
          "%s: TensorBoard events not fully written (%s)", self.tb.logdir, e.strerror or e
        )


def _train(config, workdir: str, ds, net, graphs, t_setup: float, parallel) -> Dict[str, Any]:
  # the config is read here, once; the loop below sees typed settings only
  run = loop_settings(config)
  settings = steps.step_settings(config, ds, parallel)
  tx, kge_tx = steps.make_optimizers(config)
  trainer = make_trainer(
    net, graphs, settings, tx, kge_tx, make_samplers(config, ds, settings.use_kge), workdir
  )
  if trainer.partition is not None and distributed.is_primary():
    rundir.write_json(os.path.join(workdir, "partition.json"), trainer.partition)
    log.info("graph blocks: %s", _partition_summary(trainer.partition))
  record = results_settings(config)

  eval_sets = make_eval_sets(ds, run.eval_chunk)
  train_counts = np.bincount(ds.train[:, 0], minlength=ds.n_users)
  selection = ds.selection
  root_key = jax.random.PRNGKey(run.seed)
  state = steps.create_train_state(
    jax.random.fold_in(root_key, 0), net, tx, kge_tx, settings.use_kge
  )
  embed = trainer.embed or steps.make_embed_fn(net)
  best_params = jax.tree_util.tree_map(jnp.copy, state.params)
  mgr, state, best_params, loop = _restore(run.checkpoint, workdir, state, best_params)
  state = trainer.place(state)
  train_seconds_at_start = loop.train_seconds  # the time budget counts this invocation only
  setup_seconds = time.perf_counter() - t_setup

  last_save = time.perf_counter()
  primary = distributed.is_primary()  # the one process that writes and logs
  pbar = tqdm(
    range(loop.epoch + 1, run.max_epochs),
    desc=f"train {ds.name}",
    unit="epoch",
    dynamic_ncols=True,
    disable=None if primary else True,
  )
  k = run.select_k
  writer = EpochWriter(workdir, log_lines=pbar.disable, k=k) if primary else _NoWriter()
  try:
    for epoch in pbar:
      if loop.stop:
        break
      t0 = time.perf_counter()
      progress = EpochProgress(epoch) if primary and pbar.disable else None
      state, terms = run_epoch(trainer, state, ds, run, epoch, root_key, workdir, mgr, progress)
      jax.block_until_ready(state)
      t_train = time.perf_counter() - t0
      params = trainer.host_view(state.params)
      if not steps.all_finite(params):
        _raise_non_finite(f"parameters after epoch {epoch}", workdir, mgr)
      loop.epoch = epoch
      embeddings = embed(params, trainer.graphs)  # one propagation serves both evaluations
      sel_metrics = evaluate(embeddings, eval_sets, selection, run, train_counts, loop)
      seconds = time.perf_counter() - t0
      loop.train_seconds += seconds
      loop.epoch_seconds.append(t_train)
      score = sel_metrics.pop("selection_score")
      writer.write(
        {
          "epoch": epoch,
          **terms,
          "mask_rate": float(settings.mask_rate(epoch * settings.steps_per_epoch)),
          **{f"{selection}/{k}": v for k, v in sel_metrics.items()},
          "selection_score": score,
          "best_epoch": loop.best_epoch,
          "train_seconds": t_train,
          "seconds": seconds,
        },
        selection,
      )
      if loop.bad_epochs >= run.patience and epoch + 1 >= run.min_epochs:
        loop.stop = EARLY_STOPPING
      budget = run.max_seconds
      spent = loop.train_seconds - train_seconds_at_start + setup_seconds
      if budget and spent >= budget and not loop.stop:
        loop.stop, loop.budget_seconds = BUDGET, float(budget)
        log.warning("stopping: time budget of %.0f s reached after epoch %d", budget, epoch)
      due = time.perf_counter() - last_save >= run.checkpoint_every_seconds
      loop.train_step_compilations = _most(
        loop.train_step_compilations, _compilations(trainer.train_step)
      )
      loop, due = _decided_by_primary(loop, due)  # its clock decides the budget and the saves
      if loop.best_epoch == epoch:
        best_params = jax.tree_util.tree_map(jnp.copy, params)
      last = bool(loop.stop) or epoch + 1 >= run.max_epochs
      if mgr is not None and (last or due):
        # Epochs are pure functions of (state, seed, epoch): resuming from an older checkpoint
        # replays the same epochs, so saving every epoch buys nothing but I/O.
        ckpt.save(mgr, epoch, trainer.host_view(state), best_params, loop.to_json())
        last_save = time.perf_counter()
      pbar.set_postfix(
        loss=f"{terms['loss']:.4f}",
        **{f"{selection}_r@{k}": f"{sel_metrics[f'recall@{k}']:.4f}"},
        best=loop.best_epoch,
      )
      if loop.stop:
        break
  finally:
    pbar.close()  # before any error message, so that it is the last line
    writer.close()
  results = write_results(
    workdir, record, ds, loop, trainer, best_params, setup_seconds, settings.parallel.mode
  )
  if primary:
    write_final_scalars(workdir, results)
  if primary and run.plot:
    from cikg_jax.training import plots

    plots.training_curves(writer.metrics_path, os.path.join(workdir, "curves.png"), selection)
  log.info(
    "best epoch %d: test %s; stopped after %d epochs: %s",
    results["best_epoch"],
    "  ".join(
      f"{m}@{k} {results['test'].get(f'{m}@{k}', float('nan')):.4f}"
      for k in run.ks
      for m in ("recall", "ndcg")
    ),
    results["epochs_run"],
    results["stop_reason"],
  )
  return results


def write_final_scalars(workdir: str, results: Dict[str, Any]) -> None:
  """The best epoch's valid and test metrics as TensorBoard scalars `best/<split>/<metric>` at
  that epoch, next to the per-epoch curves (which hold the selection split only)."""
  try:
    tb = summary_writer(workdir)
  except ImportError:
    return
  with tb:
    for split in ("valid", "test"):
      for k, v in (results.get(split) or {}).items():
        if isinstance(v, (int, float)):
          tb.add_scalar(f"best/{split}/{k}", v, results["best_epoch"])


def _decided_by_primary(loop: LoopState, save_due: bool):
  """Process 0's loop state and save decision on every process (the inputs with one process):
  evaluation is the same everywhere, the clock that the time budget and the saves follow is not."""
  if distributed.process_count() == 1:
    return loop, save_due
  got = distributed.from_primary({"loop": loop.to_json(), "save_due": save_due}, "epoch")
  return LoopState.from_json(got["loop"]), got["save_due"]


class _NoWriter:
  """EpochWriter's stand-in on the processes other than 0."""

  metrics_path = None

  def write(self, record, selection) -> None:
    pass

  def close(self) -> None:
    pass


def _most(a: Optional[int], b: Optional[int]) -> Optional[int]:
  return b if a is None else a if b is None else max(a, b)


def _compilations(jitted) -> Optional[int]:
  try:
    return int(jitted._cache_size())
  except AttributeError:  # private API; absent in some jax versions and for pmap
    return None


def stop_reason(loop: LoopState, patience: int) -> str:
  if loop.stop == BUDGET:
    return f"time budget of {loop.budget_seconds:.0f} s reached"
  if loop.stop == EARLY_STOPPING:
    return f"early stopping (patience {patience})"
  return "max_epochs"


class ResultsSettings(NamedTuple):
  """What results.json records of a config."""

  views: Any
  patience: int
  backend: str


def results_settings(config) -> ResultsSettings:
  return ResultsSettings(
    config.views, int(config.train.patience), prop.resolve_backend(config.model.backend)
  )


def write_results(
  workdir,
  record: ResultsSettings,
  ds,
  loop: LoopState,
  trainer: Trainer,
  best_params,
  setup_seconds: float,
  parallel_mode: str,
) -> Dict[str, Any]:
  """results.json: the best epoch's metrics on every split and user group, and the run's costs."""
  results = {
    "dataset": ds.name,
    "selection": ds.selection,
    "views": record.views,
    "best_epoch": loop.best_epoch,
    "epochs_run": loop.epoch + 1,
    "stopped_early": bool(loop.stop),
    "stop_reason": stop_reason(loop, record.patience),
    "valid": loop.best.get("valid", {}),
    "test": loop.best.get("test", {}),
    "test_groups": loop.best.get("test_groups"),
    "test_groups_equal_interactions": loop.best.get("test_groups_equal_interactions"),
    "train_seconds": loop.train_seconds,
    "setup_seconds": setup_seconds,
    "epoch_seconds_median": (float(np.median(loop.epoch_seconds)) if loop.epoch_seconds else None),
    "train_step_compilations": _most(
      loop.train_step_compilations, _compilations(trainer.train_step)
    ),
    "backend": record.backend,
    "devices": [str(d) for d in jax.devices()],
    "data_parallel_devices": trainer.n_devices,
    "processes": distributed.process_count(),
    "cpus_usable": runtime.cpus_usable(),
    "parallel": {"mode": parallel_mode, "mesh": trainer.mesh}
    | ({} if trainer.partition is None else {"node_order": trainer.partition["node_order"]}),
    "n_params": steps.param_count(best_params),
  }
  if distributed.is_primary():
    rundir.write_json(os.path.join(workdir, "results.json"), results)
  return results

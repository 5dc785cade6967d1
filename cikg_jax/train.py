"""Training driver: the train state, one jitted train step, the epoch loop with early stopping on
the selection split, JSON-lines logging, checkpoints and exact resume."""

from __future__ import annotations

import contextlib
import os
import time
from typing import Any, Dict, List, Optional

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from tqdm.auto import tqdm

from cikg_jax import checkpoint as ckpt
from cikg_jax import evaluation, model, rundir, schedules
from cikg_jax import graph as graph_lib
from cikg_jax.data import dataset as dataset_lib
from cikg_jax.data import sampling


@flax.struct.dataclass
class TrainState:
  step: jnp.ndarray
  params: Dict[str, Any]
  opt_state: Any
  kge_opt_state: Any


def make_optimizers(config):
  return optax.adam(config.train.lr), optax.adam(config.kge.lr)


def create_train_state(key, ds, config, tx, kge_tx) -> TrainState:
  params = model.init_params(key, ds.n_nodes, sampling.kge_relation_count(ds, config.views),
                             config)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                    kge_opt_state=kge_tx.init(params) if config.kge.use else None)


def _all_finite(tree):
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)]))


def _keep_if(ok, new, old):
  """A non-finite step leaves the state untouched, so the run can stop with the last good one."""
  return jax.tree_util.tree_map(lambda n, o: jnp.where(ok, n, o), new, old)


def make_train_step(config, tx, axis_name: Optional[str] = None):
  """The one train step: a pure function (state, batch, key, graphs) -> (state, metrics).

  `graphs` is an argument, not a closure constant, so the step is compiled once per run. With
  `axis_name` it runs data-parallel (cikg_jax/parallel.py): each device holds a shard of the batch
  (with the whole batch's row count), the same key and replicated state and graphs, and the
  shards' gradients and loss terms are summed, which equals the whole batch's exactly."""

  def train_step(state: TrainState, batch, key, graphs: model.Graphs):
    grad_fn = jax.value_and_grad(model.total_loss, has_aux=True)
    (loss, metrics), grads = grad_fn(state.params, graphs, batch, key, config)
    if axis_name is not None:
      grads, metrics, loss = jax.lax.psum((grads, metrics, loss), axis_name)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ok = jnp.isfinite(loss) & _all_finite(params)
    new = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
    metrics["finite"] = ok
    return _keep_if(ok, new, state), metrics

  return train_step


def make_kge_step(config, kge_tx, axis_name: Optional[str] = None):
  """TransE step with its own Adam (METHOD.md §4); data-parallel over equal shards with
  `axis_name` (the loss is a plain mean, so the mean of shard gradients is exact)."""

  def kge_step(state: TrainState, batch):
    loss, grads = jax.value_and_grad(model.kge_loss)(state.params, batch, config)
    if axis_name is not None:
      grads, loss = jax.lax.pmean((grads, loss), axis_name)
    updates, kge_opt_state = kge_tx.update(grads, state.kge_opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ok = jnp.isfinite(loss) & _all_finite(params)
    new = state.replace(params=params, kge_opt_state=kge_opt_state)
    return _keep_if(ok, new, state), {"kge": loss, "finite": ok}

  return kge_step


# ---- evaluation sets ------------------------------------------------------------------------
def make_eval_sets(ds, config) -> Dict[str, evaluation.EvalSet]:
  """Known items are excluded from ranking: training items, and for test also validation."""
  c = config.eval.chunk_size
  sets = {"test": evaluation.make_eval_set(ds.test, [ds.train, ds.valid], ds.n_users,
                                           ds.n_items, c)}
  if ds.selection == "valid":
    sets["valid"] = evaluation.make_eval_set(ds.valid, [ds.train], ds.n_users, ds.n_items, c)
  return sets


def selection_score(metrics: Dict[str, float], k: int) -> float:
  return metrics[f"recall@{k}"] + metrics[f"ndcg@{k}"]


def _mean_metrics(step_metrics: List[Dict]) -> Dict[str, float]:
  if not step_metrics:
    return {}
  stacked = jax.device_get(step_metrics)
  return {k: float(np.mean([m[k] for m in stacked])) for k in stacked[0] if k != "finite"}


def _check_finite(step_metrics, epoch, what, workdir, mgr):
  """Raises on a non-finite step, naming the newest checkpoint (asked of orbax only then)."""
  flags = np.asarray(jax.device_get([m["finite"] for m in step_metrics]))
  if flags.size and not flags.all():
    bad = int(np.flatnonzero(~flags)[0])
    saved_epoch = ckpt.latest_step(mgr)
    if mgr is None:
      saved = "checkpointing is off (train.checkpoint=False), so no checkpoint exists"
    elif saved_epoch is None:
      saved = "no checkpoint has been saved yet"
    else:
      saved = (f"the latest checkpoint (end of epoch {saved_epoch}) is in "
               f"{os.path.join(workdir, 'checkpoints')}")
    raise FloatingPointError(
        f"non-finite {what} loss at epoch {epoch}, step {bad} of the epoch: training stopped. "
        f"The state was kept at the last finite step; {saved}. Lower the learning rate "
        "or check the data.")


def _compilations(jitted) -> Optional[int]:
  try:
    return int(jitted._cache_size())
  except AttributeError:  # private API; absent in some jax versions
    return None


def setup(config, verbose: bool = True):
  """Data, graphs and operators for a config (shared by training, benchmarks and prediction)."""
  ds = dataset_lib.load_from_config(config, verbose=verbose)
  graphs = graph_lib.build_graphs(ds, views=config.views,
                                  add_self_loops=config.model.add_self_loops,
                                  use_kg_edges=config.model.use_kg_edges,
                                  use_interest_edges=config.model.use_interest_edges,
                                  verbose=verbose)
  config = _effective_config(config, ds)
  return ds, config, model.make_graphs(graphs, ds, config)


def _effective_config(config, ds):
  """Switches off terms the data cannot support, loudly."""
  config = ml_collections.ConfigDict(config.to_dict())
  if config.kge.use and not (ds.has_kg and config.model.use_kg_edges):
    print("note: no KG triples/edges: TransE (kge.use) switched off", flush=True)
    config.kge.use = False
  if config.uir.weight > 0 and (ds.n_interests == 0 or not config.model.use_interest_edges):
    print("note: no interest nodes: interest reconstruction (uir.weight) switched off", flush=True)
    config.uir.weight = 0.0
  return config


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> Dict[str, Any]:
  """Trains to early stop on the selection split and writes config.json, metrics.jsonl,
  results.json (and checkpoints/, curves.png) into `workdir`; resumes if interrupted.

  The workdir is created only once the data has loaded, and a run in it is resumed only if its
  identity (config and data, rundir.RESUMABLE_KEYS aside) matches; train.resume=False deletes it
  and starts afresh. One training at a time holds the workdir's lock."""
  rundir.check_workdir(workdir)
  resume = config.train.get("resume", True)
  with contextlib.ExitStack() as held:
    existed = os.path.isdir(workdir)
    if existed:  # refuse a busy workdir or another run at once, before loading data
      held.enter_context(rundir.locked(workdir))
      if resume:
        rundir.check_resume(workdir, config)
    requested = config
    t_setup = time.perf_counter()
    ds, config, graphs = setup(requested)
    data_sha256 = rundir.data_digest(ds)
    if not existed:  # created only now that the data has loaded
      os.makedirs(workdir, exist_ok=True)
      held.enter_context(rundir.locked(workdir))
    if resume:  # again: the data's digest, and a run another process may have begun meanwhile
      rundir.check_resume(workdir, requested, config, data_sha256)
    else:
      gone = rundir.clear(workdir)
      if gone:
        print(f"note: train.resume=False: deleted {', '.join(gone)} in {workdir}", flush=True)
    rundir.write_json(os.path.join(workdir, rundir.IDENTITY_FILE),
                      {"config": rundir.plain(requested), "data_sha256": data_sha256})
    rundir.write_json(os.path.join(workdir, "config.json"), config.to_dict())
    return _train(config, workdir, ds, graphs, t_setup)


def _train(config, workdir: str, ds, graphs, t_setup: float) -> Dict[str, Any]:
  eval_sets = make_eval_sets(ds, config)
  train_counts = np.bincount(ds.train[:, 0], minlength=ds.n_users)
  ks = tuple(config.eval.ks)
  sel_name = ds.selection

  tx, kge_tx = make_optimizers(config)
  root_key = jax.random.PRNGKey(config.seed)
  state = create_train_state(jax.random.fold_in(root_key, 0), ds, config, tx, kge_tx)
  from cikg_jax import parallel  # (parallel imports this module)
  n_devices = parallel.num_devices(config.train.num_devices)
  if n_devices > 1:
    train_step, kge_step = parallel.make_steps(config, tx, kge_tx)
    place = lambda tree: parallel.replicate(tree, n_devices)
    host_view = parallel.unreplicate
    shard = lambda b, count=True: parallel.shard_batch(b, n_devices, count)
  else:
    train_step = jax.jit(make_train_step(config, tx), donate_argnums=0)
    kge_step = (jax.jit(make_kge_step(config, kge_tx), donate_argnums=0) if config.kge.use
                else None)
    place = host_view = lambda tree: tree
    shard = lambda b, count=True: b
  embed = jax.jit(lambda params, g: model.final_embeddings(params, g, config))
  sampler = sampling.NegativeSampler(ds.train, ds.n_users, ds.n_items)
  if config.kge.use:
    triples, n_for_steps = sampling.kge_triples(ds, config.views)
    kge_steps = max(1, (n_for_steps or len(triples)) // config.kge.batch_size)
    # paper: negative tails are entity rows; release: its range is mostly user rows (§7.3).
    tail_range = ((ds.item_offset, ds.item_offset + ds.n_entities) if config.views == "paper"
                  else (0, ds.n_entities))

  loop = {"epoch": -1, "best_score": -np.inf, "best_epoch": -1, "bad_epochs": 0,
          "best": {}, "train_seconds": 0.0, "epoch_seconds": [], "stopped": False}
  best_params = jax.tree_util.tree_map(jnp.copy, state.params)
  metrics_path = os.path.join(workdir, "metrics.jsonl")
  mgr = ckpt.manager(workdir) if config.train.checkpoint else None
  if mgr is not None:
    restored = ckpt.restore_latest(mgr, state, best_params, delete_damaged=True)
    if restored is not None:
      state, best_params, loop = restored
      if str(loop.get("stop_reason", "")).startswith("time budget"):
        loop["stopped"] = False  # a budget stop is a pause: a rerun continues the run
        loop.pop("stop_reason")
      print(f"resumed from {workdir}/checkpoints at epoch {loop['epoch']}", flush=True)
  if mgr is None or loop["epoch"] < 0:
    rundir.write_atomic(metrics_path, "")
  else:
    rundir.truncate_jsonl(metrics_path, loop["epoch"])
  state = place(state)
  train_seconds_at_start = loop["train_seconds"]  # the time budget counts this invocation only
  setup_seconds = time.perf_counter() - t_setup

  def eval_split(embeddings, name):
    return evaluation.evaluate(*embeddings, eval_sets[name], ks)

  last_save = time.perf_counter()
  pbar = tqdm(range(loop["epoch"] + 1, config.train.max_epochs), desc=f"train {ds.name}",
              unit="epoch", dynamic_ncols=True, disable=None)
  try:
    for epoch in pbar:
      if loop["stopped"]:
        break
      t0 = time.perf_counter()
      epoch_key = jax.random.fold_in(root_key, epoch + 1)
      rate = schedules.mask_rate(epoch, config.uir.schedule, config.uir.p0, config.uir.pmax,
                                 config.uir.total_epoch)
      batches = sampling.bpr_epoch(ds.train, sampler, config.train.batch_size,
                                   sampling.epoch_rng(config.seed, epoch))
      step_metrics = []
      for b in range(batches["users"].shape[0]):
        batch = {k: v[b] for k, v in batches.items()}
        batch["mask_rate"] = np.float32(rate)
        state, m = train_step(state, shard(batch), jax.random.fold_in(epoch_key, b), graphs)
        step_metrics.append(m)
      _check_finite(step_metrics, epoch, "training", workdir, mgr)
      losses = _mean_metrics(step_metrics)
      if kge_step is not None:
        kbatches = sampling.kge_epoch(triples, kge_steps, config.kge.batch_size, *tail_range,
                                      sampling.epoch_rng(config.seed, epoch, 1))
        kge_metrics = []
        for b in range(kge_steps):
          state, m = kge_step(state, shard({k: v[b] for k, v in kbatches.items()}, False))
          kge_metrics.append(m)
        _check_finite(kge_metrics, epoch, "TransE", workdir, mgr)
        losses.update(_mean_metrics(kge_metrics))
      jax.block_until_ready(state)
      t_train = time.perf_counter() - t0

      params = host_view(state.params)
      embeddings = embed(params, graphs)  # one propagation serves both evaluations
      sel_metrics, _ = eval_split(embeddings, sel_name)
      score = selection_score(sel_metrics, config.eval.select_k)
      improved = score > loop["best_score"]
      if improved:
        best_params = jax.tree_util.tree_map(jnp.copy, params)
        best = {"valid": {}, "test": {}, "test_groups": None}
        best[sel_name] = sel_metrics
        test_metrics, groups = evaluation.evaluate_groups(*embeddings, eval_sets["test"], ks,
                                                          train_counts, config.eval.n_groups)
        best["test"], best["test_groups"] = test_metrics, groups["quantile"]
        best["test_groups_equal_interactions"] = groups["equal_interactions"]
        loop.update(best_score=score, best_epoch=epoch, bad_epochs=0, best=best)
      else:
        loop["bad_epochs"] += 1
      seconds = time.perf_counter() - t0
      loop["epoch"] = epoch
      loop["train_seconds"] += seconds
      loop["epoch_seconds"].append(t_train)
      record = {"epoch": epoch, **losses, "mask_rate": rate,
                **{f"{sel_name}/{k}": v for k, v in sel_metrics.items()},
                "selection_score": score, "best_epoch": loop["best_epoch"],
                "train_seconds": t_train, "seconds": seconds}
      rundir.append_line(metrics_path, record)  # on disk before the checkpoint claiming it
      if loop["bad_epochs"] >= config.train.patience and epoch + 1 >= config.train.min_epochs:
        loop["stopped"] = True
      budget = config.train.max_seconds
      spent = loop["train_seconds"] - train_seconds_at_start + setup_seconds
      if budget and spent >= budget and not loop["stopped"]:
        loop["stopped"] = True
        loop["stop_reason"] = f"time budget of {budget:.0f} s reached"
        print(f"stopping: {loop['stop_reason']} after epoch {epoch}", flush=True)
      last = loop["stopped"] or epoch + 1 >= config.train.max_epochs
      if mgr is not None and (last or time.perf_counter() - last_save
                              >= config.train.checkpoint_every_seconds):
        # Epochs are pure functions of (state, seed, epoch): resuming from an older checkpoint
        # replays the same epochs, so saving every epoch buys nothing but I/O.
        ckpt.save(mgr, epoch, host_view(state), best_params, loop)
        last_save = time.perf_counter()
      pbar.set_postfix(loss=f"{losses['loss']:.4f}",
                       **{f"{sel_name}_r@20": f"{sel_metrics['recall@20']:.4f}"},
                       best=loop["best_epoch"])
      if loop["stopped"]:
        break
  finally:
    pbar.close()  # before any error message, so that it is the last line

  results = {
      "dataset": ds.name, "selection": sel_name, "views": config.views,
      "best_epoch": loop["best_epoch"], "epochs_run": loop["epoch"] + 1,
      "stopped_early": bool(loop["stopped"]),
      "stop_reason": loop.get("stop_reason") or ("early stopping (patience "
                                                  f"{config.train.patience})" if loop["stopped"]
                                                  else "max_epochs"),
      "valid": loop["best"].get("valid", {}), "test": loop["best"].get("test", {}),
      "test_groups": loop["best"].get("test_groups"),
      "test_groups_equal_interactions": loop["best"].get("test_groups_equal_interactions"),
      "train_seconds": loop["train_seconds"], "setup_seconds": setup_seconds,
      "epoch_seconds_median": float(np.median(loop["epoch_seconds"])) if loop["epoch_seconds"]
      else None,
      "train_step_compilations": _compilations(train_step),
      "backend": model._backend(config), "devices": [str(d) for d in jax.devices()],
      "data_parallel_devices": n_devices,
      "n_params": int(sum(x.size for x in jax.tree_util.tree_leaves(best_params))),
  }
  rundir.write_json(os.path.join(workdir, "results.json"), results)
  if config.train.plot:
    from cikg_jax import plots
    plots.training_curves(metrics_path, os.path.join(workdir, "curves.png"), sel_name)
  print(f"best epoch {results['best_epoch']}: test "
        + "  ".join(f"{k} {results['test'].get(k, float('nan')):.4f}"
                    for k in ("recall@20", "ndcg@20", "recall@50", "ndcg@50")), flush=True)
  return results

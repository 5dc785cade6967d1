import json
import os

import jax
import numpy as np
import pytest

from cikg_jax.data import sampling
from cikg_jax.training import checkpoint as ckpt
from cikg_jax.training import schedules, steps, train
from configs import lightgcn, tiny


def _tiny(tmp_path, **train_overrides):
  c = tiny.get_config()
  c.synthetic_dir = str(tmp_path / "data")
  c.train.plot = False
  for k, v in train_overrides.items():
    setattr(c.train, k, v)
  return c


def _lines(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(x) for x in f]


def test_end_to_end_tiny(tmp_path):
  c = _tiny(tmp_path, max_epochs=4, plot=True)
  workdir = str(tmp_path / "run")
  res = train.train_and_evaluate(c, workdir)
  for name in ("config.json", "metrics.jsonl", "results.json", "curves.png"):
    assert os.path.exists(os.path.join(workdir, name)), name
  assert res["train_step_compilations"] == 1  # one compiled step for the whole run
  assert set(res) >= {
    "best_epoch",
    "selection",
    "valid",
    "test",
    "test_groups",
    "train_seconds",
    "epoch_seconds_median",
  }
  for split in ("valid", "test"):
    assert set(res[split]) >= {
      f"{m}@{k}" for m in ("recall", "ndcg", "precision", "hit") for k in (20, 50, 100)
    }
  lines = _lines(workdir)
  assert [ln["epoch"] for ln in lines] == [0, 1, 2, 3]
  for key in ("bpr", "reg", "cl", "uir", "kge", "loss", "valid/recall@50", "seconds"):
    assert all(np.isfinite(ln[key]) for ln in lines), key
  # the planted structure is learnable: far above random ranking (20/200 items ~ 0.1)
  assert res["test"]["recall@20"] > 0.3
  assert sum(g["n_users"] for g in res["test_groups"]) == 300
  assert sum(g["n_users"] for g in res["test_groups_equal_interactions"]) == 300


def test_resume_is_exact(tmp_path):
  """2 epochs, interrupted, then 2 more == 4 epochs straight."""
  straight = str(tmp_path / "straight")
  train.train_and_evaluate(_tiny(tmp_path, max_epochs=4, patience=100), straight)
  resumed = str(tmp_path / "resumed")
  train.train_and_evaluate(_tiny(tmp_path, max_epochs=2, patience=100), resumed)
  train.train_and_evaluate(_tiny(tmp_path, max_epochs=4, patience=100), resumed)
  a, b = _lines(straight), _lines(resumed)
  assert len(a) == len(b) == 4
  for x, y in zip(a, b):
    for key in ("loss", "bpr", "cl", "uir", "kge", "valid/recall@20", "valid/ndcg@50"):
      assert x[key] == pytest.approx(y[key], rel=1e-6, abs=1e-9), (x["epoch"], key)


def test_non_finite_loss_stops_with_clear_error_naming_epoch_and_step(tmp_path, monkeypatch):
  """With lr = NaN the first update makes every parameter NaN: step 0's loss (of the initial
  parameters) is finite, step 1's is not. The host check names that step; the state is not kept
  at the last finite step (the newest checkpoint holds the last good state) and nothing of the
  failed epoch is saved. (The config check refuses a NaN learning rate; it is bypassed here to
  reach the trainer's own check.)"""
  from cikg_jax.training import config_rules

  monkeypatch.setattr(config_rules, "check", lambda config: None)
  c = _tiny(tmp_path, max_epochs=3, lr=float("nan"))
  workdir = str(tmp_path / "nan")
  with pytest.raises(
    FloatingPointError,
    match=r"non-finite training loss at epoch 0, step 1 of "
    r"the epoch: training stopped; no checkpoint has been saved yet\. Lower the "
    r"learning rate",
  ):
    train.train_and_evaluate(c, workdir)
  assert _lines(workdir) == []
  assert ckpt.manager(workdir).all_steps() == []
  assert not os.path.exists(os.path.join(workdir, "results.json"))


def _batch(n=256):
  return {
    "users": np.zeros(n, np.int32),
    "pos": np.ones(n, np.int32),
    "neg": np.full(n, 2, np.int32),
    "mask": np.ones(n, np.float32),
  }


def test_train_step_is_pure_and_compiles_once(tmp_path):
  c = _tiny(tmp_path)
  ds, c, net, graphs = steps.setup(c)
  tx, kge_tx = steps.make_optimizers(c)
  state = steps.create_train_state(jax.random.PRNGKey(0), net, tx, kge_tx, c.kge.use)
  rates = np.array([0.3, 0.6], np.float32)  # epoch 0 and 1 of a one-step epoch
  step = jax.jit(steps.make_train_step(net, tx, steps.epoch_schedule(rates, 1)))
  batch = _batch()
  s1, m1 = step(state, batch, jax.random.PRNGKey(1), graphs)
  s2, m2 = step(state, batch, jax.random.PRNGKey(1), graphs)  # same inputs, same outputs
  assert float(m1["loss"]) == float(m2["loss"])
  for a, b in zip(jax.tree_util.tree_leaves(s1.params), jax.tree_util.tree_leaves(s2.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert int(s1.step) == 1 and int(state.step) == 0
  # the next epoch's mask rate is read from the table in the step: data, not a new program
  _, m3 = step(s1, batch, jax.random.PRNGKey(1), graphs)
  n_rows = graphs.interest_rows.shape[0]
  assert float(m1["uir_masked_rows"]) == np.floor(np.float32(0.3) * n_rows + 1e-6)
  assert float(m3["uir_masked_rows"]) == np.floor(np.float32(0.6) * n_rows + 1e-6)
  assert step._cache_size() == 1


def test_mask_rates_table_follows_the_schedule(tmp_path):
  c = _tiny(tmp_path, max_epochs=5)
  for schedule in schedules.SCHEDULES:
    c.uir.schedule, c.uir.p0, c.uir.pmax, c.uir.total_epoch = schedule, 0.05, 0.75, 3
    want = [np.float32(schedules.mask_rate(e, schedule, 0.05, 0.75, 3)) for e in range(5)]
    got = steps.mask_rates(c)
    assert got.dtype == np.float32 and got.tolist() == want


def test_mask_rate_schedule_is_the_epochs_rate_at_every_step(tmp_path):
  """steps.step_settings' schedule, read by the step and the logger: step s has the rate of
  epoch s // steps_per_epoch, the last epoch's past the table's end."""
  c = _tiny(tmp_path, max_epochs=3)
  c.uir.schedule, c.uir.p0, c.uir.pmax, c.uir.total_epoch = "lin", 0.1, 0.7, 2
  ds = steps.setup(c)[0]
  settings = steps.step_settings(c, ds)
  per_epoch, rates = settings.steps_per_epoch, steps.mask_rates(c)
  assert per_epoch == sampling.num_batches(len(ds.train), c.train.batch_size)
  for step in range(5 * per_epoch):
    want = rates[min(step // per_epoch, len(rates) - 1)]
    assert float(settings.mask_rate(step)) == want
    assert float(jax.jit(settings.mask_rate)(step)) == want
  assert settings.parallel == steps.parallel_settings(c) and settings.use_kge == c.kge.use


def test_train_step_mask_rate_follows_the_schedule(tmp_path):
  """Two steps per epoch: step s masks floor(rate(s // 2) * n) interest rows, the rate of the
  table's last epoch past its end."""
  c = _tiny(tmp_path, max_epochs=3)
  c.uir.schedule, c.uir.p0, c.uir.pmax, c.uir.total_epoch = "exp", 0.05, 0.75, 2
  ds, c, net, graphs = steps.setup(c)
  n_rows = int(graphs.interest_rows.shape[0])
  assert n_rows == len(ds.connected_interest_ids()) > 10
  tx, kge_tx = steps.make_optimizers(c)
  state = steps.create_train_state(jax.random.PRNGKey(0), net, tx, kge_tx, c.kge.use)
  step = jax.jit(steps.make_train_step(net, tx, steps.epoch_schedule(steps.mask_rates(c), 2)))
  batches = sampling.bpr_epoch(
    ds.train,
    sampling.NegativeSampler(ds.train, ds.n_users, ds.n_items),
    c.train.batch_size,
    np.random.default_rng(0),
  )
  got = []
  for s in range(8):
    state, terms = step(
      state, {k: v[s % 4] for k, v in batches.items()}, jax.random.PRNGKey(s), graphs
    )
    got.append(float(terms["uir_masked_rows"]))
  # independently: p0 (pmax/p0)^(t/T), capped at pmax, in float32 as the step holds it
  rate = lambda t: np.float32(min(0.05 * (0.75 / 0.05) ** (t / 2), 0.75))
  want = [float(np.floor(np.float64(rate(min(s // 2, 2))) * n_rows + 1e-6)) for s in range(8)]
  assert len(set(want)) == 3  # three distinct counts: the test tells epochs apart
  assert got == want


def test_lightgcn_config_has_only_bpr(tmp_path):
  c = lightgcn.get_config("synthetic")
  c.synthetic_dir = str(tmp_path / "data")
  c.train.max_epochs = 2
  c.train.plot = False
  train.train_and_evaluate(c, str(tmp_path / "lgcn"))
  line = _lines(str(tmp_path / "lgcn"))[0]
  assert "bpr" in line and not {"cl", "uir", "kge"} & set(line)
  assert line["loss"] == pytest.approx(line["bpr"] + line["reg"], rel=1e-5)


def test_every_loss_term_decreases_on_tiny(tmp_path):
  c = _tiny(tmp_path, max_epochs=8, patience=100)
  c.uir.schedule = "const"  # a rising mask rate makes the task harder; hold it fixed here
  c.uir.p0 = 0.3
  # At the release's weights (0.01, 0.03) BPR dominates and on this toy data the contrastive term
  # drifts up while BPR falls; with weights that let every term steer, each must go down.
  c.cl.weight = 0.2
  c.uir.weight = 0.2
  train.train_and_evaluate(c, str(tmp_path / "dec"))
  lines = _lines(str(tmp_path / "dec"))
  for key in ("bpr", "cl", "uir", "kge", "loss"):
    first, last = lines[0][key], lines[-1][key]
    assert np.isfinite(first) and np.isfinite(last)
    assert last < first, (key, first, last)


def test_predict_top_k_from_a_run_excludes_known_items(tmp_path):
  from cikg_jax import predict

  workdir = str(tmp_path / "pred")
  train.train_and_evaluate(_tiny(tmp_path, max_epochs=2), workdir)
  ds, net, graphs, params = predict.load_run(workdir)
  recs = predict.top_k(ds, net, graphs, params, [0, 5], 10)
  known = {(int(u), int(i)) for u, i in np.concatenate([ds.train, ds.valid])}
  for u, items in recs.items():
    assert len(items) == 10 and not any((u, i) in known for i in items)
  # same ranking as the evaluation's top-k for user 0
  u_emb, i_emb = net.apply({"params": params}, graphs)
  scores = np.array(u_emb[0] @ i_emb.T)
  scores[[i for (uu, i) in known if uu == 0]] = -np.inf
  assert recs[0] == np.argsort(-scores, kind="stable")[:10].tolist()
  with pytest.raises(ValueError, match="out of range"):
    predict.top_k(ds, net, graphs, params, [10_000], 5)


# ---- the command line's per-epoch log lines and TensorBoard event files --------------------------
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
  """`python -m cikg_jax.main` on the tiny config for 2 epochs, stdout and stderr piped (not a
  terminal: no progress bar, log lines instead)."""
  import subprocess
  import sys

  tmp = tmp_path_factory.mktemp("cli")
  workdir = str(tmp / "run")
  env = dict(
    os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), JAX_PLATFORMS="cpu"
  )
  p = subprocess.run(
    [
      sys.executable,
      "-m",
      "cikg_jax.main",
      "--config=configs/tiny.py",
      f"--workdir={workdir}",
      "--config.train.max_epochs=2",
      "--config.train.plot=False",
      f"--config.synthetic_dir={tmp / 'data'}",
    ],
    stdin=subprocess.DEVNULL,
    capture_output=True,
    text=True,
    env=env,
    cwd=ROOT,
    timeout=600,
  )
  assert p.returncode == 0, p.stderr[-3000:]
  return {"workdir": workdir, "out": p.stdout + p.stderr, "lines": _lines(workdir)}


def test_cli_logs_one_line_per_epoch_with_loss_and_selection_metric(cli_run):
  import re

  records = cli_run["lines"]
  assert [r["epoch"] for r in records] == [0, 1]
  out = cli_run["out"]
  assert "\r" not in out  # no progress bar redrawn into a pipe
  epoch_lines = [ln for ln in out.splitlines() if re.search(r"(?<!best )\bepoch \d+:", ln)]
  assert len(epoch_lines) == 2, out[-3000:]
  number = r"(-?\d+(?:\.\d*)?(?:e[-+]?\d+)?)"
  for line, record in zip(epoch_lines, records):
    assert re.search(rf"\bepoch {record['epoch']}:", line), line
    loss = re.search(rf"\bloss {number}", line)
    selection = re.search(rf"\bselection {number}", line)
    assert loss and selection, line
    # as printed: 4 to 5 significant digits
    assert float(loss.group(1)) == pytest.approx(record["loss"], rel=1e-3, abs=1e-4), line
    assert float(selection.group(1)) == pytest.approx(
      record["selection_score"], rel=1e-3, abs=1e-4
    ), line


def _read_events(path):
  """The Event protos of a TensorBoard event file (TFRecord framing: length, masked CRC-32C of
  the length, data, masked CRC-32C of the data), with both checksums verified."""
  import struct

  from tensorboardX.crc32c import crc32c
  from tensorboardX.proto import event_pb2

  assert crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value: the right polynomial

  def masked(data):
    x = crc32c(data) & 0xFFFFFFFF
    return (((x >> 15) | (x << 17)) + 0xA282EAD8) & 0xFFFFFFFF

  events = []
  with open(path, "rb") as f:
    data = f.read()
  pos = 0
  while pos < len(data):
    header = data[pos : pos + 8]
    (length,), (header_crc,) = (
      struct.unpack("<Q", header),
      struct.unpack("<I", data[pos + 8 : pos + 12]),
    )
    assert header_crc == masked(header)
    body = data[pos + 12 : pos + 12 + length]
    (body_crc,) = struct.unpack("<I", data[pos + 12 + length : pos + 16 + length])
    assert len(body) == length and body_crc == masked(body)
    events.append(event_pb2.Event.FromString(body))
    pos += 16 + length
  return events


def _tb_tag(key):
  """TensorBoard's tag for a key: characters outside [-/\\w.] become "_" (tensorboardX cleans
  tags so; e.g. valid/recall@20 is shown as valid/recall_20)."""
  import re

  return re.sub(r"[^-/\w.]", "_", key)


def test_tensorboard_events_hold_every_metrics_jsonl_key(cli_run):
  tb = os.path.join(cli_run["workdir"], "tensorboard")
  files = [os.path.join(tb, n) for n in os.listdir(tb) if n.startswith("events.out.tfevents")]
  assert files
  scalars = {}
  for path in files:
    for event in _read_events(path):
      for v in event.summary.value:
        value = v.simple_value if v.HasField("simple_value") else v.tensor.float_val[0]
        scalars[(v.tag, event.step)] = value
  records = cli_run["lines"]
  assert len(records) == 2
  for record in records:
    assert {
      "loss",
      "bpr",
      "cl",
      "uir",
      "kge",
      "mask_rate",
      "valid/recall@20",
      "selection_score",
    } <= set(record)
    keys = set(record) - {"epoch"}
    assert len({_tb_tag(k) for k in keys}) == len(keys)  # no two keys share a tag
    for key in keys:
      tag = (_tb_tag(key), record["epoch"])
      assert tag in scalars, tag
      assert scalars[tag] == pytest.approx(record[key], rel=1e-6, abs=1e-30), key
  per_epoch = {tag for tag in scalars if not tag[0].startswith("best/")}
  assert per_epoch == {(_tb_tag(k), r["epoch"]) for r in records for k in r if k != "epoch"}
  # the best epoch's valid and test metrics too (the curves hold the selection split only)
  with open(os.path.join(cli_run["workdir"], "results.json")) as f:
    results = json.load(f)
  for split in ("valid", "test"):
    for k, v in results[split].items():
      tag = (_tb_tag(f"best/{split}/{k}"), results["best_epoch"])
      assert scalars[tag] == pytest.approx(v, rel=1e-6, abs=1e-30), tag
  assert len(scalars) - len(per_epoch) == len(results["valid"]) + len(results["test"])


def test_cli_last_log_line_says_why_the_run_stopped(cli_run):
  last = cli_run["out"].strip().splitlines()[-1]
  assert last.endswith("stopped after 2 epochs: max_epochs"), last


def test_a_long_epoch_logs_its_progress_when_output_is_not_a_terminal(
  tmp_path, caplog, monkeypatch
):
  import logging

  caplog.set_level(logging.INFO, logger="cikg_jax")
  monkeypatch.setattr(train, "PROGRESS_EVERY_SECONDS", 0.0)  # every step counts as a minute
  c = _tiny(tmp_path, max_epochs=1, checkpoint=False)
  train.train_and_evaluate(c, str(tmp_path / "run"))
  steps_logged = [r.getMessage() for r in caplog.records if "BPR step" in r.getMessage()]
  assert steps_logged[0] == "epoch 0: BPR step 1 of " + steps_logged[-1].rsplit(" ", 1)[-1]
  assert steps_logged[-1].startswith(
    f"epoch 0: BPR step {len(steps_logged)} of {len(steps_logged)}"
  )
  assert any("TransE step" in r.getMessage() for r in caplog.records)


def test_readmes_tensorboard_command_reads_the_runs_curves_and_test_metrics(cli_run):
  """`tensorboard --logdir runs/` (the test extra installs tensorboard, as CI does)."""
  import subprocess
  import sys

  pytest.importorskip("tensorboard")
  exe = os.path.join(os.path.dirname(sys.executable), "tensorboard")
  logdir = os.path.dirname(cli_run["workdir"])
  p = subprocess.run(
    [exe, "--logdir", logdir, "--inspect"], capture_output=True, text=True, timeout=300
  )
  assert p.returncode == 0, p.stderr[-2000:]
  for tag in ("valid/recall_20", "loss", "best/test/recall_20", "best/valid/ndcg_20"):
    assert f"   {tag}\n" in p.stdout, tag


def test_tensorboard_writers_opened_in_one_second_keep_each_others_events(tmp_path, monkeypatch):
  """tensorboardX names an event file by the second it was opened: the best-epoch scalars written
  right after a short run must not truncate the run's per-epoch file."""
  from tensorboardX import event_file_writer

  monkeypatch.setattr(event_file_writer.time, "time", lambda: 1_700_000_000.25)
  writer = train.EpochWriter(str(tmp_path), log_lines=False, k=20)
  for epoch in range(3):
    writer.write({"epoch": epoch, "loss": 1.0 / (epoch + 1)}, "valid")
  writer.close()
  train.write_final_scalars(str(tmp_path), {"best_epoch": 1, "valid": {"recall@20": 0.5}})
  tb = tmp_path / "tensorboard"
  steps = {}
  for name in os.listdir(tb):
    for event in _read_events(str(tb / name)):
      for v in event.summary.value:
        steps.setdefault(v.tag, set()).add(event.step)
  assert steps == {"loss": {0, 1, 2}, "best/valid/recall_20": {1}}

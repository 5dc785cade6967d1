"""The training run's reliability: resume rules, the workdir lock, damaged checkpoints, the metrics
log after a crash, and one-line errors from the command line."""

import json
import logging
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cikg_jax.training import checkpoint as ckpt
from cikg_jax.training import rundir, steps, train
from configs import tiny

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEYS = ("loss", "bpr", "valid/recall@20", "valid/ndcg@50")


def _tiny(data, **train_overrides):
  c = tiny.get_config()
  c.synthetic_dir = str(data)
  c.train.plot = False
  c.train.patience = 100
  c.cl.weight = c.uir.weight = 0.0  # BPR alone compiles faster; the rules do not depend on the loss
  c.kge.use = False
  for k, v in train_overrides.items():
    setattr(c.train, k, v)
  return c


def _lines(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(x) for x in f]


def _same_numbers(a, b):
  assert [x["epoch"] for x in a] == [y["epoch"] for y in b]
  for x, y in zip(a, b):
    for key in KEYS:
      assert x[key] == pytest.approx(y[key], rel=1e-6, abs=1e-9), (x["epoch"], key)


def _snapshot(workdir):
  """Every file's bytes, so a refused run can be shown to have touched nothing."""
  out = {}
  for d, _, names in os.walk(workdir):
    for n in names:
      if n != rundir.LOCK_FILE:
        with open(os.path.join(d, n), "rb") as f:
          out[os.path.relpath(os.path.join(d, n), workdir)] = f.read()
  return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """A 3-epoch run saved every epoch (steps 1 and 2 kept) and the uninterrupted 4-epoch run."""
  root = tmp_path_factory.mktemp("runs")
  data = root / "data"
  base, straight = str(root / "base"), str(root / "straight")
  train.train_and_evaluate(_tiny(data, max_epochs=3, checkpoint_every_seconds=0.0), base)
  train.train_and_evaluate(_tiny(data, max_epochs=4), straight)
  return {"data": data, "base": base, "straight": _lines(straight)}


def _copy(runs, tmp_path, name="run"):
  dst = str(tmp_path / name)
  shutil.copytree(runs["base"], dst)
  return dst


# ---- 1. resume rules ---------------------------------------------------------------------------
@pytest.mark.parametrize(
  "change,key",
  [
    (lambda c: setattr(c.train, "lr", 0.05), "train.lr"),
    (lambda c: setattr(c, "seed", 7), "seed"),
    (lambda c: setattr(c, "selection", "test"), "selection"),
    (lambda c: setattr(c.model, "embed_dim", 16), "model.embed_dim"),
    (lambda c: setattr(c.synthetic, "n_users", 250), "synthetic.n_users"),
  ],
)
def test_resume_with_another_config_is_refused_and_touches_nothing(runs, tmp_path, change, key):
  from cikg_jax import predict

  workdir = _copy(runs, tmp_path)
  before = _snapshot(workdir)
  c = _tiny(runs["data"], max_epochs=6)
  change(c)
  with pytest.raises(rundir.RunError, match=rf"other settings \({key} .*train\.resume=False"):
    train.train_and_evaluate(c, workdir)
  assert _snapshot(workdir) == before
  predict.load_run(workdir)  # the original run is still usable


def test_resume_may_change_stopping_output_and_data_location(runs, tmp_path):
  workdir = _copy(runs, tmp_path)
  moved = tmp_path / "moved"
  shutil.copytree(runs["data"], moved)
  c = _tiny(moved, max_epochs=4, plot=True, checkpoint_every_seconds=5.0, max_seconds=1e6)
  train.train_and_evaluate(c, workdir)
  _same_numbers(_lines(workdir), runs["straight"])
  with open(os.path.join(workdir, rundir.IDENTITY_FILE)) as f:
    assert json.load(f)["config"]["synthetic_dir"] == str(moved)


def test_resume_with_changed_data_content_is_refused(runs, tmp_path):
  workdir = _copy(runs, tmp_path)
  edited = tmp_path / "edited"
  shutil.copytree(runs["data"], edited)
  path = edited / "synthetic" / "train.txt"
  lines = path.read_text().splitlines()
  lines[0] = " ".join(lines[0].split()[:-1])  # user 0 loses one training item
  path.write_text("\n".join(lines) + "\n")
  before = _snapshot(workdir)
  with pytest.raises(rundir.RunError, match=r"dataset's content"):
    train.train_and_evaluate(_tiny(edited, max_epochs=4), workdir)
  assert _snapshot(workdir) == before


def test_legacy_run_without_identity_file_is_checked_against_config_json(runs, tmp_path):
  workdir = _copy(runs, tmp_path)
  os.remove(os.path.join(workdir, rundir.IDENTITY_FILE))
  c = _tiny(runs["data"], max_epochs=4)
  c.train.lr = 0.05
  with pytest.raises(rundir.RunError, match=r"train\.lr 0\.005 -> 0\.05"):
    train.train_and_evaluate(c, workdir)


def _tb_steps(tb):
  from tests.test_train import _read_events

  return {
    e.step for n in os.listdir(tb) for e in _read_events(os.path.join(tb, n)) if e.summary.value
  }


def test_resume_false_starts_afresh(runs, tmp_path):
  workdir = _copy(runs, tmp_path)
  tb = os.path.join(workdir, "tensorboard")
  assert _tb_steps(tb) == {0, 1, 2}
  c = _tiny(runs["data"], max_epochs=1, resume=False)
  c.seed = 7
  train.train_and_evaluate(c, workdir)
  assert [ln["epoch"] for ln in _lines(workdir)] == [0]
  assert _tb_steps(tb) == {0}  # the old run's TensorBoard events are gone
  assert sorted(ckpt.manager(workdir).all_steps()) == [0]
  with open(os.path.join(workdir, "config.json")) as f:
    assert json.load(f)["seed"] == 7


# ---- 2. the lock -------------------------------------------------------------------------------
_HOLDER = (
  "import sys, time; from cikg_jax.training import rundir\n"
  "with rundir.locked(sys.argv[1]):\n"
  "  print('locked', flush=True); time.sleep(120)\n"
)


def _env():
  return dict(
    os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), JAX_PLATFORMS="cpu"
  )


def test_second_training_is_refused_naming_the_holder_and_lock_dies_with_it(runs, tmp_path):
  workdir = _copy(runs, tmp_path)
  holder = subprocess.Popen(
    [sys.executable, "-c", _HOLDER, workdir],
    stdout=subprocess.PIPE,
    text=True,
    env=_env(),
    cwd=ROOT,
  )
  try:
    assert holder.stdout.readline().strip() == "locked"
    before = _snapshot(workdir)
    with pytest.raises(rundir.RunError, match=rf"in use by another training \(PID {holder.pid}"):
      train.train_and_evaluate(_tiny(runs["data"], max_epochs=4), workdir)
    assert _snapshot(workdir) == before
  finally:
    holder.send_signal(signal.SIGKILL)
    holder.wait()
  train.train_and_evaluate(_tiny(runs["data"], max_epochs=4), workdir)  # the kernel freed it
  _same_numbers(_lines(workdir), runs["straight"])


def test_removing_the_lock_file_does_not_let_a_second_training_in(runs, tmp_path):
  workdir = _copy(runs, tmp_path)
  holder = subprocess.Popen(
    [sys.executable, "-c", _HOLDER, workdir],
    stdout=subprocess.PIPE,
    text=True,
    env=_env(),
    cwd=ROOT,
  )
  try:
    assert holder.stdout.readline().strip() == "locked"
    os.remove(os.path.join(workdir, rundir.LOCK_FILE))
    with pytest.raises(rundir.RunError, match=r"in use by another training"):
      train.train_and_evaluate(_tiny(runs["data"], max_epochs=4), workdir)
  finally:
    holder.send_signal(signal.SIGKILL)
    holder.wait()


# ---- 3. damaged checkpoints --------------------------------------------------------------------
def _biggest(d):
  files = [os.path.join(r, n) for r, _, names in os.walk(d) for n in names]
  return max(files, key=os.path.getsize)


def _truncate(path):
  os.truncate(path, os.path.getsize(path) // 2)


def _zero(path):
  with open(path, "r+b") as f:
    f.write(b"\0" * os.path.getsize(path))


def _flip(path):
  with open(path, "r+b") as f:
    f.seek(os.path.getsize(path) // 2)
    b = f.read(1)
    f.seek(-1, 1)
    f.write(bytes([b[0] ^ 1]))


def _edit_loop(path):  # valid JSON, changed state: only the digest can tell
  with open(path) as f:
    loop = json.load(f)
  loop["bad_epochs"] += 2
  with open(path, "w") as f:
    json.dump(loop, f)


DAMAGE = {
  "truncated array file": lambda s: _truncate(_biggest(os.path.join(s, "state"))),
  "zeroed array file": lambda s: _zero(_biggest(os.path.join(s, "state"))),
  "missing item": lambda s: shutil.rmtree(os.path.join(s, "best_params")),
  "truncated loop json": lambda s: _truncate(os.path.join(s, "loop", "metadata")),
  "flipped byte": lambda s: _flip(_biggest(os.path.join(s, "state"))),
  "edited loop json": lambda s: _edit_loop(os.path.join(s, "loop", "metadata")),
}


@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_damaged_latest_checkpoint_falls_back_and_ends_exact(runs, tmp_path, caplog, kind):
  workdir = _copy(runs, tmp_path)
  DAMAGE[kind](os.path.join(workdir, "checkpoints", "2"))
  caplog.set_level(logging.INFO, logger="cikg_jax")
  train.train_and_evaluate(_tiny(runs["data"], max_epochs=4), workdir)
  out = caplog.text
  assert "checkpoint step 2 in" in out and "is damaged" in out
  assert "resuming from checkpoint step 1 instead" in out
  _same_numbers(_lines(workdir), runs["straight"])
  assert sorted(ckpt.manager(workdir).all_steps()) == [1, 3]  # the damaged step 2 is gone


def test_no_restorable_step_is_a_clear_error_and_deletes_nothing(runs, tmp_path):
  workdir = _copy(runs, tmp_path)
  for step in ("1", "2"):
    _truncate(os.path.join(workdir, "checkpoints", step, "loop", "metadata"))
  with pytest.raises(ckpt.CheckpointError, match=r"no checkpoint step restores.*resume=False"):
    train.train_and_evaluate(_tiny(runs["data"], max_epochs=4), workdir)
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["1", "2"]


# ---- 4. metrics.jsonl after a crash ------------------------------------------------------------
def test_torn_last_metrics_line_is_dropped_and_log_replaced_not_rewritten(runs, tmp_path):
  workdir = _copy(runs, tmp_path)
  path = os.path.join(workdir, "metrics.jsonl")
  with open(path, "a") as f:
    f.write('{"epoch": 3, "loss": 0.12')  # a crash in the middle of epoch 3's line
  os.link(path, str(tmp_path / "old_log"))
  train.train_and_evaluate(_tiny(runs["data"], max_epochs=4), workdir)
  _same_numbers(_lines(workdir), runs["straight"])
  with open(tmp_path / "old_log") as f:  # the old file was replaced whole, never edited in place
    assert f.read().endswith('"loss": 0.12')


def test_epoch_line_is_on_disk_before_its_checkpoint(tmp_path, monkeypatch):
  events = []
  real_fsync, real_save = os.fsync, ckpt.save

  def fsync(fd):
    if os.readlink(f"/proc/self/fd/{fd}").endswith("metrics.jsonl"):
      events.append("log")
    return real_fsync(fd)

  def save(mgr, epoch, *a, **k):
    events.append(f"save {epoch}")
    return real_save(mgr, epoch, *a, **k)

  monkeypatch.setattr(os, "fsync", fsync)
  monkeypatch.setattr(ckpt, "save", save)
  train.train_and_evaluate(
    _tiny(tmp_path / "data", max_epochs=2, checkpoint_every_seconds=0.0), str(tmp_path / "run")
  )
  assert [e for e in events if e == "log" or e.startswith("save")][-4:] == [
    "log",
    "save 0",
    "log",
    "save 1",
  ]


def _consistent(workdir):
  """What a run's files must agree on after any fault: metrics.jsonl holds epochs 0..E once each
  in order, results.json ran E + 1 epochs and its best epoch has a line, the newest checkpoint is
  epoch E."""
  epochs = [x["epoch"] for x in _lines(workdir)]
  with open(os.path.join(workdir, "results.json")) as f:
    res = json.load(f)
  assert epochs == list(range(res["epochs_run"]))
  assert _lines(workdir)[res["best_epoch"]]["best_epoch"] == res["best_epoch"]
  steps = ckpt.manager(workdir).all_steps()
  assert not steps or max(steps) == epochs[-1]
  return res


def _tear(path, epoch):
  """Cuts the line of `epoch` in half and drops the lines after it (a crash mid-write)."""
  with open(path) as f:
    lines = f.read().splitlines(keepends=True)
  with open(path, "w") as f:
    f.write("".join(lines[:epoch]) + lines[epoch][: len(lines[epoch]) // 2])


@pytest.mark.parametrize("how", ["torn line of a checkpointed epoch", "deleted log"])
def test_log_lines_a_checkpoint_covers_but_the_log_lacks_are_replayed(runs, tmp_path, caplog, how):
  workdir = _copy(runs, tmp_path)
  caplog.set_level(logging.INFO, logger="cikg_jax")
  path = os.path.join(workdir, "metrics.jsonl")
  if how == "deleted log":
    os.remove(path)
  else:
    _tear(path, 2)  # checkpoint step 2 claims epoch 2, whose line is torn
  train.train_and_evaluate(_tiny(runs["data"], max_epochs=4), workdir)
  assert "replaying" in caplog.text
  _same_numbers(_lines(workdir), runs["straight"])
  _consistent(workdir)


def _strip_timing(d):
  return {k: v for k, v in d.items() if k not in TIMING}


@pytest.mark.parametrize("how", ["rerun", "results.json deleted", "log deleted", "killed write"])
def test_rerunning_a_finished_run_rewrites_the_same_results_and_log(
  runs, tmp_path, monkeypatch, how
):
  workdir = _copy(runs, tmp_path)
  with open(os.path.join(workdir, "results.json")) as f:
    want = _strip_timing(json.load(f))
  want_lines = [_strip_timing(x) for x in _lines(workdir)]
  if how == "results.json deleted":
    os.remove(os.path.join(workdir, "results.json"))
  elif how == "log deleted":
    os.remove(os.path.join(workdir, "metrics.jsonl"))
  elif how == "killed write":  # the process dies between the last checkpoint and results.json
    os.remove(os.path.join(workdir, "results.json"))
    real = rundir.write_json

    def dies(path, obj):
      if path.endswith("results.json"):
        raise KeyboardInterrupt
      return real(path, obj)

    monkeypatch.setattr(rundir, "write_json", dies)
    with pytest.raises(KeyboardInterrupt):
      train.train_and_evaluate(_tiny(runs["data"], max_epochs=3), workdir)
    monkeypatch.setattr(rundir, "write_json", real)
  train.train_and_evaluate(_tiny(runs["data"], max_epochs=3), workdir)
  assert _strip_timing(_consistent(workdir)) == want
  assert [_strip_timing(x) for x in _lines(workdir)] == want_lines


def test_checkpointing_off_on_a_run_with_checkpoints_is_refused(runs, tmp_path):
  workdir = _copy(runs, tmp_path)
  before = _snapshot(workdir)
  with pytest.raises(rundir.RunError, match=r"train\.checkpoint=False would restart it.*resume"):
    train.train_and_evaluate(_tiny(runs["data"], max_epochs=2, checkpoint=False), workdir)
  assert _snapshot(workdir) == before
  train.train_and_evaluate(
    _tiny(runs["data"], max_epochs=2, checkpoint=False, resume=False), workdir
  )
  assert not os.path.exists(os.path.join(workdir, "checkpoints"))
  assert _consistent(workdir)["epochs_run"] == 2


def test_a_failed_checkpoint_save_is_one_error_naming_its_directory_and_a_rerun_resumes(
  runs, tmp_path, monkeypatch
):
  import orbax.checkpoint as ocp

  workdir = _copy(runs, tmp_path)
  real = ocp.CheckpointManager.save

  def full(self, step, *a, **k):
    if step == 3:
      raise ValueError('RESOURCE_EXHAUSTED: Error writing "step/0": No space left on device')
    return real(self, step, *a, **k)

  monkeypatch.setattr(ocp.CheckpointManager, "save", full)
  saved = re.escape(os.path.join(workdir, "checkpoints"))
  with pytest.raises(
    ckpt.CheckpointError,
    match=rf"^{saved}: saving the checkpoint of epoch 3 failed \(ValueError: RESOURCE_EXHAUSTED"
    r".*the disk is full: free space, then rerun the same command to resume from the saved "
    r"epoch 2$",
  ):
    train.train_and_evaluate(_tiny(runs["data"], max_epochs=4), workdir)
  monkeypatch.setattr(ocp.CheckpointManager, "save", real)
  train.train_and_evaluate(_tiny(runs["data"], max_epochs=4), workdir)
  _same_numbers(_lines(workdir), runs["straight"])
  _consistent(workdir)


def test_a_full_disk_at_a_log_write_names_the_file_and_leaves_no_torn_line(
  runs, tmp_path, monkeypatch
):
  workdir = _copy(runs, tmp_path)
  real_fsync = os.fsync

  def fsync(fd):
    if os.readlink(f"/proc/self/fd/{fd}").endswith("metrics.jsonl"):
      raise OSError(28, "No space left on device")
    return real_fsync(fd)

  monkeypatch.setattr(os, "fsync", fsync)
  path = os.path.join(workdir, "metrics.jsonl")
  with pytest.raises(
    rundir.RunError, match=rf"^{re.escape(path)}: cannot write \(No space left on device\); free"
  ):
    train.train_and_evaluate(_tiny(runs["data"], max_epochs=4), workdir)
  assert [x["epoch"] for x in _lines(workdir)] == [0, 1, 2]
  monkeypatch.setattr(os, "fsync", real_fsync)
  train.train_and_evaluate(_tiny(runs["data"], max_epochs=4), workdir)
  _same_numbers(_lines(workdir), runs["straight"])
  _consistent(workdir)


# ---- 5. the non-finite message names the real checkpoint -----------------------------------------
def test_non_finite_loss_without_checkpoint_says_so(tmp_path, monkeypatch):
  _poison(monkeypatch, 0, "loss")  # (a NaN learning rate is refused as a config value)
  c = _tiny(tmp_path / "data", max_epochs=3)
  with pytest.raises(FloatingPointError, match="no checkpoint has been saved yet") as e:
    train.train_and_evaluate(c, str(tmp_path / "nan"))
  assert "epoch -1" not in str(e.value)


def _poison(monkeypatch, epoch, what):
  """Wraps the train step: at step 1 of `epoch` the logged loss becomes NaN ("loss"), or at the
  epoch's last step the parameters do while every logged loss stays finite ("params")."""
  make_step, make_settings = steps.make_train_step, steps.step_settings
  seen = {}

  def settings(*args, **kwargs):
    seen["settings"] = make_settings(*args, **kwargs)
    return seen["settings"]

  def poisoned(net, tx, mask_rate, shards=None):
    step = make_step(net, tx, mask_rate, shards)
    steps_per_epoch = seen["settings"].steps_per_epoch

    def train_step(state, batch, key, graphs):
      e, s = state.step // steps_per_epoch, state.step % steps_per_epoch
      state, terms = step(state, batch, key, graphs)
      if what == "loss":
        terms["loss"] = jnp.where((e == epoch) & (s == 1), jnp.nan, terms["loss"])
      else:
        bad = (e == epoch) & (s == steps_per_epoch - 1)
        state = state.replace(
          params=jax.tree_util.tree_map(lambda x: jnp.where(bad, jnp.nan, x), state.params)
        )
      return state, terms

    return train_step

  monkeypatch.setattr(steps, "step_settings", settings)
  monkeypatch.setattr(steps, "make_train_step", poisoned)


@pytest.mark.parametrize(
  "what,message",
  [
    ("loss", r"non-finite training loss at epoch 5, step 1 of the epoch"),
    ("params", r"non-finite parameters after epoch 5"),
  ],
)
def test_non_finite_names_the_latest_saved_epoch_and_saves_nothing_after(
  runs, tmp_path, monkeypatch, what, message
):
  """Saved at epoch 2 only (time-based saving), non-finite at epoch 5: the error names epoch 5
  and the checkpoint of epoch 2 (not 'end of epoch 4'). The state is not kept at the last finite
  step: the checkpoint of epoch 2 is the last good state, and nothing is saved after the error
  (no checkpoint, no metrics line, no results)."""
  workdir = _copy(runs, tmp_path)
  _poison(monkeypatch, 5, what)
  c = _tiny(runs["data"], max_epochs=8, checkpoint_every_seconds=1e9)
  saved = os.path.join(workdir, "checkpoints")
  with pytest.raises(
    FloatingPointError,
    match=message + r": training stopped; the latest "
    r"checkpoint \(end of epoch 2\) is in "
    + re.escape(saved)
    + r"\. Lower the learning rate or check the data\.",
  ):
    train.train_and_evaluate(c, workdir)
  assert sorted(ckpt.manager(workdir).all_steps()) == [1, 2]
  assert [ln["epoch"] for ln in _lines(workdir)] == [0, 1, 2, 3, 4]
  with open(os.path.join(workdir, "results.json")) as f:  # the base run's, untouched
    assert json.load(f)["epochs_run"] == 3


# ---- 6. one-line errors from the command line ----------------------------------------------------
def _main(*args):
  return subprocess.run(
    [sys.executable, "-m", "cikg_jax.main", *args],
    capture_output=True,
    text=True,
    env=_env(),
    cwd=ROOT,
    timeout=300,
  )


def _bad_data(tmp_path):
  d = tmp_path / "data" / "mini"
  d.mkdir(parents=True)
  (d / "train.txt").write_text("0 1 2\n1 3 x\n")
  (d / "test.txt").write_text("0 4\n1 5\n")
  return ["--config.dataset=mini", f"--config.data_dir={tmp_path / 'data'}"]


@pytest.mark.parametrize(
  "case",
  [
    "bad data",
    "missing data dir",
    "workdir is a file",
    "unknown config key",
    "unknown key with --config",
    "missing config file",
    "bad config value",
  ],
)
def test_user_errors_end_as_one_line(tmp_path, case):
  workdir = tmp_path / "run"
  config = os.path.join(ROOT, "configs", "tiny.py")
  if case == "unknown key with --config":
    args, want, rc = [f"--config={config}", "--config.train.lrr=1"], "error: --config override", 2
  elif case == "missing config file":
    args = ["--config=configs/none.py", "--config.train.lr=1"]
    want, rc = "error: --config: ", 2
  elif case == "bad config value":
    args, want, rc = ["--config.eval.ks=abc"], "error: config.eval.ks=('abc',): must be", 2
  elif case == "bad data":
    args, want, rc = _bad_data(tmp_path), "error: " + str(tmp_path / "data/mini/train.txt:2: "), 1
  elif case == "missing data dir":
    args = ["--config.dataset=mini", f"--config.data_dir={tmp_path / 'none'}"]
    want, rc = f"error: {tmp_path / 'none' / 'mini'}: dataset directory not found", 1
  elif case == "workdir is a file":
    workdir.write_text("")
    args, want, rc = [], f"error: {workdir}: the workdir is a file", 1
  else:
    args, want, rc = ["--config.train.lrr=1"], "error: --config override: unknown key 'lrr'", 2
  first = [a for a in args if a.startswith("--config=")]  # --config before its overrides
  rest = [a for a in args if a not in first]
  p = _main(*first, f"--workdir={workdir}", f"--config.synthetic_dir={tmp_path / 'syn'}", *rest)
  assert len(p.stderr.strip().splitlines()) == 1 or case in ("bad data", "missing data dir"), (
    p.stderr
  )
  last = p.stderr.strip().splitlines()[-1]
  assert p.returncode == rc, p.stderr
  assert last.startswith(want), p.stderr
  assert "Traceback" not in p.stderr
  if case != "workdir is a file":
    assert not workdir.exists()


def test_a_workdir_that_is_a_symlink_loop_is_named_as_such(tmp_path):
  workdir = tmp_path / "run"
  os.symlink(workdir, workdir)
  with pytest.raises(
    rundir.RunError, match=rf"{workdir}: the workdir is a symbolic link that leads"
  ):
    train.train_and_evaluate(_tiny(tmp_path / "data", max_epochs=1), str(workdir))


def test_debug_flag_shows_the_traceback(tmp_path):
  p = _main(f"--workdir={tmp_path / 'run'}", "--debug", *_bad_data(tmp_path))
  assert p.returncode != 0 and "Traceback" in p.stderr and "DataFormatError" in p.stderr


# ---- 7. kill -9 at random points, restart, the uninterrupted numbers ----------------------------
TIMING = ("train_seconds", "seconds", "setup_seconds", "epoch_seconds_median")
_KILL_EPOCHS = 6
_TMP = "orbax-checkpoint-tmp"


def _launch_cli(workdir, data, devices, mode="data"):
  """The training CLI on configs/tiny.py (the full CIKGRec loss), saving after every epoch;
  over `devices` simulated CPU devices in parallel `mode` if > 1."""
  flags = [
    f"--workdir={workdir}",
    f"--config.synthetic_dir={data}",
    "--config.train.plot=False",
    f"--config.train.max_epochs={_KILL_EPOCHS}",
    "--config.train.patience=100",
    "--config.train.checkpoint_every_seconds=0",
    f"--config.parallel.num_devices={devices}",
    f"--config.parallel.mode={mode}",
  ]
  env = dict(_env(), XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  return subprocess.Popen(
    [sys.executable, "-m", "cikg_jax.main", *flags],
    stdout=subprocess.DEVNULL,
    stderr=subprocess.PIPE,
    text=True,
    env=env,
    cwd=ROOT,
  )


def _entries(d):
  """{(name, inode)} of a checkpoint directory: a step directory or temporary directory made
  anew (even under an old name) is a new pair."""
  try:
    return {(e.name, e.inode()) for e in os.scandir(d)}
  except FileNotFoundError:
    return set()


def _wait_and_kill(proc, ckdir, kind, rng, epoch_seconds):
  """SIGKILLs `proc` at a random point of the given kind, unless it finishes first; returns
  what the kill hit: "checkpoint write" (a temporary checkpoint directory was left behind),
  "epoch", or None (it finished)."""
  seen = _entries(ckdir)
  target = rng.randrange(_KILL_EPOCHS - 1)  # from this epoch's save on
  while proc.poll() is None:
    new = [n for n, _ in _entries(ckdir) - seen]
    saving = [n for n in new if _TMP in n and int(n.split(".")[0]) >= target]
    saved = [n for n in new if n.isdigit() and int(n) >= target]
    if kind == "checkpoint" and saving:
      time.sleep(rng.uniform(0, 0.01))
      break
    if kind == "epoch" and saved:  # a random moment of the next epoch (train, eval or save)
      time.sleep(rng.uniform(0, 1.2 * epoch_seconds))
      break
    time.sleep(0.001)
  if proc.poll() is not None:
    return None
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  left = [n for n, _ in _entries(ckdir) - seen if _TMP in n]  # this launch's unfinished save
  return "checkpoint write" if left else "epoch"


@pytest.mark.slow
@pytest.mark.parametrize(
  "devices,mode",
  [(1, "data"), (4, "data"), (4, "graph")],
  ids=["one_device", "data_4_devices", "graph_4_devices"],
)
def test_sigkill_at_random_points_then_restart_gives_the_uninterrupted_numbers(
  tmp_path, devices, mode
):
  """Four SIGKILLs of the training CLI in a seeded random order of kinds and epochs, two while a
  checkpoint is being written (one that the save outran is retried, twice at most) and two at a
  random moment of an epoch, each followed by a restart in the same workdir; the run then ends
  with metrics.jsonl and results.json equal to an uninterrupted run's (timings aside), bit for
  bit."""
  data = str(tmp_path / "data")
  straight, killed = str(tmp_path / "straight"), str(tmp_path / "killed")
  t0 = time.perf_counter()
  p = _launch_cli(straight, data, devices, mode)
  assert p.wait(timeout=900) == 0, p.stderr.read()[-3000:]
  epoch_seconds = float(np.median([x["seconds"] for x in _lines(straight)[1:]]))
  rng = random.Random(20261126 + devices)
  kinds = ["checkpoint", "checkpoint", "epoch", "epoch"]
  rng.shuffle(kinds)
  hits, retries = [], 2
  while kinds:
    kind = kinds.pop(0)
    p = _launch_cli(killed, data, devices, mode)
    hit = _wait_and_kill(p, os.path.join(killed, "checkpoints"), kind, rng, epoch_seconds)
    if hit is None:  # finished before the kill: nothing left to interrupt
      assert p.returncode == 0, p.stderr.read()[-3000:]
      break
    hits.append((kind, hit, max((x["epoch"] for x in _lines(killed)), default=-1)))
    if kind == "checkpoint" and hit != "checkpoint write" and retries:  # the save won the race
      kinds.append(kind)
      retries -= 1
  p = _launch_cli(killed, data, devices, mode)
  assert p.wait(timeout=900) == 0, p.stderr.read()[-3000:]
  print(
    f"\n{devices} device(s): kills (kind, hit, last logged epoch) {hits}; "
    f"{time.perf_counter() - t0:.0f} s"
  )
  assert ("checkpoint", "checkpoint write") in [h[:2] for h in hits]  # a save was cut short
  assert len(hits) >= 3
  strip = lambda d: {k: v for k, v in d.items() if k not in TIMING}
  assert [strip(x) for x in _lines(killed)] == [strip(x) for x in _lines(straight)]
  with open(os.path.join(straight, "results.json")) as f:
    want = strip(json.load(f))
  with open(os.path.join(killed, "results.json")) as f:
    got = strip(json.load(f))
  assert got == want
  assert sorted(ckpt.manager(killed).all_steps()) == [_KILL_EPOCHS - 2, _KILL_EPOCHS - 1]


# ---- 8. the last line of a failed run is its one-line error -------------------------------------
def _tiny_cli_flags(data, max_epochs):
  """configs/tiny.py on the command line with the overrides of `_tiny`."""
  return [
    f"--config.synthetic_dir={data}",
    "--config.train.plot=False",
    "--config.train.patience=100",
    "--config.cl.weight=0.0",
    "--config.uir.weight=0.0",
    "--config.kge.use=False",
    "--config.train.checkpoint_every_seconds=0",
    f"--config.train.max_epochs={max_epochs}",
  ]


@pytest.mark.slow
def test_cli_with_every_checkpoint_step_damaged_ends_in_one_line(runs, tmp_path):
  workdir = _copy(runs, tmp_path)
  for step in ("1", "2"):
    _zero(_biggest(os.path.join(workdir, "checkpoints", step, "state")))
  p = _main(f"--workdir={workdir}", *_tiny_cli_flags(runs["data"], 4))
  assert p.returncode == 1
  assert re.match(
    r"error: .*checkpoints: no checkpoint step restores \(tried \[2, 1\]\)",
    p.stderr.strip().splitlines()[-1],
  ), p.stderr[-2000:]
  _only_log_lines_before_the_error(p.stderr)


def test_failed_restore_hides_asyncio_reports_of_its_unawaited_reads(caplog):
  """A damaged step fails one TensorStore read while others are still pending; the task whose
  exception nobody awaits is reported by asyncio's logger when collected. Inside the restore
  guard that report is dropped; outside it, and for anything else asyncio logs, it is not."""
  import asyncio
  import gc

  async def read():
    raise ValueError("damaged chunk")

  def leave_unretrieved_task():
    loop = asyncio.new_event_loop()
    task = loop.create_task(read())
    loop.run_until_complete(asyncio.sleep(0))  # runs the task; nobody retrieves its exception
    loop.close()
    del task
    gc.collect()

  caplog.set_level(logging.ERROR, logger="asyncio")
  with ckpt._quiet_coroutines():
    leave_unretrieved_task()
    logging.getLogger("asyncio").error("an unrelated asyncio error")
  assert [r.getMessage() for r in caplog.records] == ["an unrelated asyncio error"]
  caplog.clear()
  leave_unretrieved_task()
  assert [r.getMessage().partition("\n")[0] for r in caplog.records] == [
    "Task exception was never retrieved"
  ]


def _only_log_lines_before_the_error(stderr):
  """Before the error line only the run's own log lines (absl's I/W prefix, their indented
  continuation lines): no traceback, no library's report of the same failure."""
  *before, _ = stderr.strip().splitlines()
  noise = [x for x in before if not re.match(r"[IW]\d{4} |  \S", x)]
  assert not noise, stderr[-3000:]


@pytest.fixture
def small_disk(tmp_path):
  """A 3 MiB tmpfs (root and a kernel that allows the mount), unmounted afterwards."""
  d = tmp_path / "small"
  d.mkdir()
  if os.geteuid() != 0 or shutil.which("mount") is None:
    pytest.skip("mounting a tmpfs needs root")
  r = subprocess.run(
    ["mount", "-t", "tmpfs", "-o", "size=3M", "tmpfs", str(d)], capture_output=True
  )
  if r.returncode:
    pytest.skip(f"cannot mount a tmpfs: {r.stderr.decode().strip()}")
  yield d
  subprocess.run(["umount", str(d)], check=False)


@pytest.mark.slow
@pytest.mark.parametrize("free_bytes", [300_000, 150_000, 60_000, 10_000])
def test_cli_on_a_full_disk_ends_in_one_line_and_resumes_once_space_returns(
  runs, small_disk, free_bytes
):
  """The workdir on a small tmpfs filled but for `free_bytes`: the run stops at whichever write
  fails first (a checkpoint, the metrics log, identity.json) with one error line naming it, and
  once space returns the same command finishes with the uninterrupted numbers."""
  filler = small_disk / "filler"
  total = shutil.disk_usage(small_disk).free
  filler.write_bytes(b"\0" * max(0, total - free_bytes))
  workdir = str(small_disk / "run")
  flags = [f"--workdir={workdir}", *_tiny_cli_flags(runs["data"], 4)]
  p = _main(*flags)
  last = p.stderr.strip().splitlines()[-1]
  assert p.returncode == 1 and last.startswith(f"error: {workdir}"), p.stderr[-3000:]
  assert "No space left" in last or "disk is full" in last, last
  _only_log_lines_before_the_error(p.stderr)
  filler.unlink()
  p = _main(*flags)
  assert p.returncode == 0, p.stderr[-3000:]
  _same_numbers(_lines(workdir), runs["straight"])
  _consistent(workdir)


@pytest.mark.slow
def test_sigkill_between_the_last_checkpoint_and_results_json(runs, tmp_path):
  """The training CLI SIGKILLed by the kernel the moment it would write results.json (every
  checkpoint and log line already on disk): the same command then ends with the numbers and
  files of an uninterrupted run."""
  flags = _tiny_cli_flags(runs["data"], 4)
  straight, killed = str(tmp_path / "straight"), str(tmp_path / "killed")
  assert _main(f"--workdir={straight}", *flags).returncode == 0
  dies_at_results = (
    "import os, runpy, signal, sys\n"
    "from cikg_jax.training import rundir\n"
    "real = rundir.write_json\n"
    "def write_json(path, obj):\n"
    "  if path.endswith('results.json'):\n"
    "    os.kill(os.getpid(), signal.SIGKILL)\n"
    "  return real(path, obj)\n"
    "rundir.write_json = write_json\n"
    "sys.argv = ['cikg_jax.main', *sys.argv[1:]]\n"
    "runpy.run_module('cikg_jax.main', run_name='__main__')\n"
  )
  p = subprocess.run(
    [sys.executable, "-c", dies_at_results, f"--workdir={killed}", *flags],
    capture_output=True,
    text=True,
    env=_env(),
    cwd=ROOT,
    timeout=300,
  )
  assert p.returncode == -signal.SIGKILL, p.stderr[-2000:]
  assert not os.path.exists(os.path.join(killed, "results.json"))
  assert [x["epoch"] for x in _lines(killed)] == [0, 1, 2, 3]
  assert _main(f"--workdir={killed}", *flags).returncode == 0
  with open(os.path.join(straight, "results.json")) as f:
    want = _strip_timing(json.load(f))
  assert _strip_timing(_consistent(killed)) == want
  assert [_strip_timing(x) for x in _lines(killed)] == [_strip_timing(x) for x in _lines(straight)]

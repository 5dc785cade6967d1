"""Several processes training one run (cikg_jax/parallel/distributed.py): two local CPU processes over
127.0.0.1 (JAX's gloo collectives), one simulated device each, against one process with two
devices; only process 0 writes; resume across processes; a refusal on process 0 stops both. The
settings' sources (config, Slurm) are checked without processes."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from cikg_jax.parallel import distributed
from configs import tiny

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMING = ("train_seconds", "seconds", "setup_seconds", "epoch_seconds_median")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _env(devices: int):
  return dict(
    os.environ,
    PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
    JAX_PLATFORMS="cpu",
    XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
  )


def _launch(workdir, data, processes: int, devices: int, *flags, timeout=600, own=None):
  """`processes` training processes (the CLI) on one workdir, `devices` CPU devices each (`own`:
  flags of each process's own); returns [(returncode, stdout, stderr)] in process order."""
  cmd = [
    sys.executable,
    "-m",
    "cikg_jax.main",
    f"--workdir={workdir}",
    f"--config.synthetic_dir={data}",
    "--config.train.plot=False",
    f"--config.parallel.num_devices={devices}",
    *flags,
  ]
  if processes > 1:
    port = _free_port()
    cmd += [
      f"--config.parallel.coordinator_address=127.0.0.1:{port}",
      f"--config.parallel.num_processes={processes}",
    ]
  procs = [
    subprocess.Popen(
      cmd
      + ([f"--config.parallel.process_id={p}"] if processes > 1 else [])
      + (own[p] if own else []),
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
      env=_env(devices),
      cwd=ROOT,
    )
    for p in range(processes)
  ]
  out = []
  try:
    for p in procs:
      so, se = p.communicate(timeout=timeout)
      out.append((p.returncode, so, se))
  finally:
    for p in procs:
      if p.poll() is None:
        p.send_signal(signal.SIGKILL)
        p.wait()
  return out


def _ok(outs):
  for n, (rc, _, err) in enumerate(outs):
    assert rc == 0, f"process {n}: {err[-3000:]}"


def _lines(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(x) for x in f]


def _results(workdir):
  with open(os.path.join(workdir, "results.json")) as f:
    return json.load(f)


def _final_state(workdir):
  """The last checkpoint's arrays, read with one process."""
  from cikg_jax.training import checkpoint as ckpt
  from cikg_jax.training import steps

  c = tiny.get_config()
  c.synthetic_dir = os.path.join(os.path.dirname(workdir), "data")
  _, c, net, _ = steps.setup(c)
  tx, kge_tx = steps.make_optimizers(c)
  state = steps.create_train_state(jax.random.PRNGKey(0), net, tx, kge_tx, c.kge.use)
  got = ckpt.restore_latest(ckpt.manager(workdir), state, state.params)
  return jax.device_get(got[0])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """2 epochs of configs/tiny.py (the full CIKGRec loss): one process with 2 devices, two
  processes with 1 each, and two processes that stop after epoch 0 and are restarted."""
  root = tmp_path_factory.mktemp("mp")
  data = str(root / "data")
  out = {"root": root}
  for name, processes, devices, epochs in (
    ("one", 1, 2, [2]),
    ("two", 2, 1, [2]),
    ("resumed", 2, 1, [1, 2]),
  ):
    out[name] = str(root / name)
    out[name + "_logs"] = []
    for e in epochs:
      logs = _launch(out[name], data, processes, devices, f"--config.train.max_epochs={e}")
      _ok(logs)
      out[name + "_logs"].append(logs)
  return out


# Per-step loss terms come back from pmap once per local device and are averaged on the host over
# (steps x local devices) float32 values: one process holds each step's value twice, each of the
# two processes once, so numpy sums in another order (a 1-ulp difference, ~1e-7). The psum'd
# gradients, hence the parameters and every metric, are bit-identical (checked below).
REL = 1e-6


@pytest.mark.slow
def test_two_processes_equal_one_process_with_as_many_devices(runs):
  one, two = _results(runs["one"]), _results(runs["two"])
  assert (one["data_parallel_devices"], one["processes"]) == (2, 1)
  assert (two["data_parallel_devices"], two["processes"]) == (2, 2)
  assert two["test"] == one["test"] and two["valid"] == one["valid"]
  assert two["best_epoch"] == one["best_epoch"] and two["epochs_run"] == one["epochs_run"] == 2
  a, b = _lines(runs["one"]), _lines(runs["two"])
  assert [x["epoch"] for x in a] == [x["epoch"] for x in b] == [0, 1]
  for x, y in zip(a, b):
    for key in x:
      if key not in TIMING:
        assert y[key] == pytest.approx(x[key], rel=REL, abs=1e-12), (x["epoch"], key)
  s1, s2 = _final_state(runs["one"]), _final_state(runs["two"])
  for u, v in zip(jax.tree_util.tree_leaves(s1), jax.tree_util.tree_leaves(s2)):
    np.testing.assert_array_equal(u, v)


@pytest.mark.slow
def test_only_process_0_writes_and_logs(runs):
  def files(d):
    return sorted(
      os.path.relpath(os.path.join(r, n), d)
      for r, _, names in os.walk(d)
      for n in names
      if "tensorboard" not in r and "checkpoints" not in r
    )

  assert files(runs["two"]) == files(runs["one"])  # one set of run files, nothing per process
  # as many event files as one process writes (the epochs' and the best epoch's), none per process
  tb = lambda run: sorted(os.listdir(os.path.join(runs[run], "tensorboard")))
  assert len(tb("two")) == len(tb("one")) == 2
  assert len(_lines(runs["two"])) == 2
  assert not any("process_1" in n for _, dirs, _ in os.walk(runs["two"]) for n in dirs)
  (_, _, err0), (_, _, err1) = runs["two_logs"][0]
  assert "epoch 1:" in err0 and "best epoch 1" in err0
  assert "epoch" not in err1  # process 1: no progress lines


@pytest.mark.slow
def test_resume_across_processes_is_exact(runs):
  assert "resumed from" in runs["resumed_logs"][1][0][2]  # process 0 restored epoch 0
  a, b = _lines(runs["two"]), _lines(runs["resumed"])
  assert [x["epoch"] for x in b] == [0, 1]
  for x, y in zip(a, b):
    assert {k: v for k, v in x.items() if k not in TIMING} == {
      k: v for k, v in y.items() if k not in TIMING
    }
  r1, r2 = _results(runs["two"]), _results(runs["resumed"])
  for key in ("test", "valid", "test_groups", "best_epoch", "epochs_run", "n_params"):
    assert r1[key] == r2[key], key


@pytest.mark.slow
def test_damaged_latest_checkpoint_falls_back_across_processes(runs, tmp_path):
  """Every process restores; all skip the damaged newest step alike, process 0 deletes it and
  the replay ends exact."""
  workdir = str(tmp_path / "damaged")
  shutil.copytree(runs["resumed"], workdir)
  loop_file = os.path.join(workdir, "checkpoints", "1", "loop", "metadata")
  os.truncate(loop_file, os.path.getsize(loop_file) // 2)
  outs = _launch(workdir, str(runs["root"] / "data"), 2, 1, "--config.train.max_epochs=2")
  _ok(outs)
  assert "resuming from checkpoint step 0 instead" in outs[0][2]
  assert "damaged" not in outs[1][2]  # reported once, by process 0
  strip = lambda d: {k: v for k, v in d.items() if k not in TIMING}
  assert [strip(x) for x in _lines(workdir)] == [strip(x) for x in _lines(runs["two"])]
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["0", "1"]


_HOLDER = (
  "import sys, time; from cikg_jax.training import rundir\n"
  "with rundir.locked(sys.argv[1]):\n"
  "  print('locked', flush=True); time.sleep(120)\n"
)


@pytest.mark.slow
def test_refusal_on_process_0_stops_every_process(tmp_path):
  workdir = tmp_path / "busy"
  workdir.mkdir()
  holder = subprocess.Popen(
    [sys.executable, "-c", _HOLDER, str(workdir)],
    stdout=subprocess.PIPE,
    text=True,
    env=_env(1),
    cwd=ROOT,
  )
  try:
    assert holder.stdout.readline().strip() == "locked"
    outs = _launch(str(workdir), str(tmp_path / "data"), 2, 1, timeout=300)
  finally:
    holder.send_signal(signal.SIGKILL)
    holder.wait()
  (rc0, _, err0), (rc1, _, err1) = outs
  assert (rc0, rc1) == (1, 1), (err0[-2000:], err1[-2000:])
  want = f"in use by another training (PID {holder.pid}"
  assert err0.strip().splitlines()[-1].startswith("error: ") and want in err0
  assert err1.strip().splitlines()[-1].startswith("error: process 0 stopped: ") and want in err1
  assert os.listdir(workdir) == ["run.lock"]


@pytest.mark.slow
def test_processes_with_other_settings_are_refused(tmp_path):
  workdir = tmp_path / "run"
  own = [["--config.seed=1"], ["--config.seed=2"]]
  outs = _launch(str(workdir), str(tmp_path / "data"), 2, 1, timeout=300, own=own)
  for rc, _, err in outs:
    assert rc == 1, err[-2000:]
    assert "set up another run than process" in err.strip().splitlines()[-1]
  assert not (workdir / "metrics.jsonl").exists()


# ---- where the settings come from (no processes started) -----------------------------------
SLURM = dict(
  SLURM_JOB_ID="1234",
  SLURM_STEP_NODELIST="node[007-008]",
  SLURM_NTASKS="2",
  SLURM_PROCID="1",
  SLURM_LOCALID="0",
)


@pytest.fixture
def calls(monkeypatch):
  """Records jax.distributed.initialize's arguments instead of joining anything."""
  got = []
  monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: got.append(kw))
  monkeypatch.setattr(jax.config, "update", lambda *a: None)
  for v in list(SLURM) + ["OMPI_COMM_WORLD_SIZE", "JAX_COORDINATOR_ADDRESS"]:
    monkeypatch.delenv(v, raising=False)
  return got


def test_one_process_initializes_nothing(calls):
  assert distributed.initialize(tiny.get_config()) is False and calls == []
  assert distributed.local_rows({"x": np.arange(4)})["x"].tolist() == [0, 1, 2, 3]


def test_explicit_settings_come_first(calls, monkeypatch):
  for k, v in SLURM.items():
    monkeypatch.setenv(k, v)
  c = tiny.get_config()
  c.parallel.coordinator_address = "10.0.0.1:1234"
  c.parallel.num_processes = 4
  c.parallel.process_id = 3
  assert distributed.initialize(c)
  assert calls == [dict(coordinator_address="10.0.0.1:1234", num_processes=4, process_id=3)]


def test_slurm_is_left_to_jax_cluster_detection(calls, monkeypatch):
  for k, v in SLURM.items():
    monkeypatch.setenv(k, v)
  assert distributed.initialize(tiny.get_config())
  assert calls == [dict(coordinator_address=None, num_processes=None, process_id=None)]
  from jax._src.clusters import SlurmCluster

  assert SlurmCluster.is_env_present()
  assert SlurmCluster.get_coordinator_address(None, None) == f"node007:{61440 + 1234 % 4096}"
  assert (SlurmCluster.get_process_count(), SlurmCluster.get_process_id()) == (2, 1)
  c = tiny.get_config()
  c.parallel.num_processes = 1  # one process inside a multi-task step, as asked
  assert distributed.initialize(c) is False
  monkeypatch.setenv("SLURM_NTASKS", "1")  # a one-task job is one process
  assert distributed.initialize(tiny.get_config()) is False
  assert len(calls) == 1


def test_fingerprint_ignores_only_the_process_id_and_data_paths():
  a, b = tiny.get_config(), tiny.get_config()
  b.parallel.process_id, b.synthetic_dir, b.data_dir = 3, "/elsewhere", "/data"
  assert distributed.fingerprint(a, "x") == distributed.fingerprint(b, "x")
  assert distributed.fingerprint(a, "x") != distributed.fingerprint(a, "y")
  b.train.max_epochs += 1  # one process stopping earlier would leave the others waiting
  assert distributed.fingerprint(a, "x") != distributed.fingerprint(b, "x")


@pytest.mark.parametrize(
  "settings,message",
  [
    (dict(num_processes=2, coordinator_address="h:1"), "needs parallel.process_id"),
    (dict(num_processes=2, process_id=0), "need parallel.coordinator_address"),
  ],
)
def test_incomplete_settings_are_a_clear_error(calls, settings, message):
  c = tiny.get_config()
  for k, v in settings.items():
    setattr(c.parallel, k, v)
  with pytest.raises(ValueError, match=message):
    distributed.initialize(c)
  assert calls == []


# ---- the graph modes across processes ------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("mode", ["graph", "data_graph"])
def test_graph_modes_two_processes_equal_one_process_with_as_many_devices(tmp_path, mode):
  """One mesh over both processes' devices (2 + 2) against one process with 4: the same metrics
  every epoch (psums over processes add in another order: float rounding), the same test metrics
  and final parameters to rounding; a rerun after a stop at epoch 0 continues exactly (to the last
  bit's summation order in the balanced order, below). The graph mode places its rows in the
  balanced node order, which every process computes alike and the resumed run reads back from the
  run directory."""
  data = str(tmp_path / "data")
  order = "balanced" if mode == "graph" else "identity"
  flags = [
    f"--config.parallel.mode={mode}",
    "--config.train.max_epochs=2",
    f"--config.parallel.node_order={order}",
  ]
  one, two, resumed = (str(tmp_path / n) for n in ("one", "two", "resumed"))
  _ok(_launch(one, data, 1, 4, *flags))
  _ok(_launch(two, data, 2, 2, *flags))
  _ok(_launch(resumed, data, 2, 2, flags[0], flags[2], "--config.train.max_epochs=1"))
  _ok(_launch(resumed, data, 2, 2, *flags))
  r1, r2 = _results(one), _results(two)
  mesh = {"graph": 4} if mode == "graph" else {"data": 2, "graph": 2}
  assert r1["parallel"] == r2["parallel"] == {"mode": mode, "mesh": mesh, "node_order": order}
  assert os.path.exists(os.path.join(resumed, "node_order.npz")) == (order != "identity")
  assert (r1["processes"], r2["processes"]) == (1, 2)
  assert r2["best_epoch"] == r1["best_epoch"] and r2["epochs_run"] == 2
  for split in ("valid", "test"):
    for key, value in r1[split].items():
      assert r2[split][key] == pytest.approx(value, rel=REL), (split, key)
  a, b = _lines(one), _lines(two)
  assert [x["epoch"] for x in a] == [x["epoch"] for x in b] == [0, 1]
  for x, y in zip(a, b):
    for key in x:
      if key not in TIMING:
        assert y[key] == pytest.approx(x[key], rel=REL, abs=1e-12), (x["epoch"], key)
  for u, v in zip(
    jax.tree_util.tree_leaves(_final_state(one)), jax.tree_util.tree_leaves(_final_state(two))
  ):
    # Adam's update where a gradient is near 0 carries the rounding further (measured: 3 of
    # 18,944 table entries 2e-6 apart after 2 epochs)
    np.testing.assert_allclose(v, u, rtol=1e-4, atol=1e-5)
  c, d = _lines(two), _lines(resumed)  # the same processes, interrupted or not
  for x, y in zip(c, d):
    x, y = ({k: v for k, v in z.items() if k not in TIMING} for z in (x, y))
    if order == "identity":
      assert x == y  # exact
    else:
      # In the balanced order every block holds users, so the psum of the InfoNCE denominators
      # adds four non-zero parts across the two processes, in an order the CPU collectives do
      # not fix: two launches of the same run differ in the last bit (observed: cl_user 1 ulp
      # apart in epoch 0, before any resume). In id order the other parts are zeros.
      assert set(x) == set(y)
      for key, value in x.items():
        assert y[key] == pytest.approx(value, rel=1e-6, abs=1e-12), (x["epoch"], key)

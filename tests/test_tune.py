"""experiments/tune.py: equal budgets, the published configuration as trial 0, validation-only
objective, and a resume after the tuner is killed inside a trial."""

import json
import os
import signal
import subprocess
import sys
import time

import optuna
from optuna.trial import TrialState
import pytest

from cikg_jax.training import rundir
from experiments import runner, tune

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_published_configs_are_points_of_their_spaces():
  for dataset in ("dbbook2014", "book-crossing"):
    assert tune.published("cikgrec", dataset)["lr"] == 8e-4
    assert tune.published("lightgcn", dataset)["num_layers"] == (
      3 if dataset == "dbbook2014" else 4
    )
    assert tune.published("simgcl", dataset) == {
      "lr": 1e-3,
      "l2": 1e-4,
      "num_layers": 2,
      "cl_weight": 0.5,
      "eps": 0.1,
    }
    assert tune.published("kgat", dataset)["layers"] == "(64,32,16)"
    assert tune.published("kgat", dataset)["pretrain"] is False
  assert tune.published("cikgrec", "book-crossing")["tau"] == 0.15
  assert tune.published("cikgrec", "book-crossing")["num_layers"] == 4


def test_config_flags_and_run_names():
  params = {"lr": 0.002, "l2": 1e-5, "layers": "(64,32)", "pretrain": True}
  flags = tune.config_flags("kgat", params, "runs/tune/x__bprmf-pretrain__s2024")
  assert flags == [
    "--config.train.l2=1e-05",
    "--config.kge.l2=1e-05",
    "--config.kgat.layers=(64,32)",
    "--config.train.lr=0.002",
    "--config.kge.lr=0.002",
    "--config.kgat.pretrain=runs/tune/x__bprmf-pretrain__s2024",
  ]
  assert "--config.kgat.pretrain" not in " ".join(
    tune.config_flags("kgat", dict(params, pretrain=False), "p")
  )
  assert tune.params_id(params) == tune.params_id(dict(reversed(list(params.items()))))
  assert tune.params_id(params) != tune.params_id(dict(params, lr=0.0021))


def test_read_curve_ignores_a_torn_line(tmp_path):
  p = tmp_path / "metrics.jsonl"
  p.write_text(
    json.dumps({"epoch": 0, "selection_score": 0.5})
    + "\n"
    + json.dumps({"epoch": 1, "selection_score": 0.7})
    + '\n{"epoch": 2, "sel'
  )
  assert tune.read_curve(str(p)) == [0.5, 0.7]
  assert tune.read_curve(str(tmp_path / "none.jsonl")) == []


def test_a_second_tuner_on_a_study_is_refused_before_it_runs_anything(tmp_path):
  tuning, runs = tmp_path / "tuning", tmp_path / "runs"
  tuning.mkdir()
  with tune.study_lock(str(tuning / "synthetic__lightgcn.journal")):
    with pytest.raises(rundir.RunError, match=r"synthetic__lightgcn.journal is in use by another "):
      tune.tune("synthetic", "lightgcn", trials=1, tuning_dir=str(tuning), runs_dir=str(runs))
  assert (tuning / "synthetic__lightgcn.journal").read_bytes() == b""
  assert os.listdir(runs) == []  # no trial started
  assert tune.report(str(tuning)).count("|") == 0  # an empty journal is no study


def _study(tuning_dir, name="synthetic__lightgcn"):
  return optuna.load_study(
    study_name=name, storage=tune.storage_for(os.path.join(tuning_dir, f"{name}.journal"))
  )


def _tiny_tuner(tmp_path, trials: str, extra: str):
  """The tuner's command for LightGCN on the tiny synthetic data, studies and runs in tmp_path."""
  return [
    sys.executable,
    "experiments/tune.py",
    "--models=lightgcn",
    "--datasets=synthetic",
    trials,
    f"--tuning_dir={tmp_path / 'tuning'}",
    f"--runs_dir={tmp_path / 'runs'}",
    f"--extra={extra} --config.train.min_epochs=1 --config.train.patience=100",
  ]


@pytest.mark.slow
def test_tuner_resumes_after_a_kill_inside_a_trial(tmp_path):
  """Kill -9 of the tuner while trial 0 trains: the training stops with it (without that, it
  trained on and held the directory, and the retry failed on the lock); the rerun marks the trial
  failed, runs its parameters again in the same work directory (the training resumes there) and
  completes the budget."""
  tuning, runs = tmp_path / "tuning", tmp_path / "runs"
  cmd = _tiny_tuner(
    tmp_path, "--trials=2", "--config.train.max_epochs=60 --config.train.checkpoint_every_seconds=0"
  )
  env = dict(os.environ, PYTHONPATH=ROOT)
  proc = subprocess.Popen(cmd, cwd=ROOT, env=env, start_new_session=True)
  deadline = time.time() + 300
  metrics = None
  while time.time() < deadline:
    found = list(runs.glob("*/metrics.jsonl"))
    if found and len(found[0].read_text().splitlines()) >= 3:
      metrics = found[0]
      break
    time.sleep(0.2)
  assert metrics is not None, "trial 0 did not start"
  os.killpg(proc.pid, signal.SIGKILL)
  proc.wait()
  # its training (a session of its own) stops with it: nothing holds the trial's directory
  runner.wait_for_workdir(str(metrics.parent), timeout=2)
  with rundir.hold(str(metrics.parent), holder="training", hint=""):
    pass
  first = [t for t in _study(str(tuning)).trials]
  assert [t.state for t in first] == [TrialState.RUNNING]
  subprocess.run(cmd, cwd=ROOT, env=env, check=True, timeout=600)
  trials = _study(str(tuning)).trials
  assert trials[0].state == TrialState.FAIL
  retried = [t for t in trials if t.user_attrs.get("retry_of") == 0]
  assert len(retried) == 1 and retried[0].params == first[0].params
  assert retried[0].state == TrialState.COMPLETE
  assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials) == 2
  lines = [json.loads(x) for x in metrics.read_text().splitlines()]
  assert [x["epoch"] for x in lines] == list(range(60))  # resumed: every epoch once
  assert retried[0].value == max(x["selection_score"] for x in lines)
  text = tune.report(str(tuning))
  assert "| lightgcn | 2 / 0 / 1 |" in text


@pytest.mark.slow
def test_an_interrupted_trial_retried_records_the_wall_time_of_both_segments(tmp_path):
  """Ctrl-C while trial 0 trains; its retry resumes the training and its wall time includes the
  interrupted segment (the training's own clock, train_seconds, is cumulative too)."""
  runs = tmp_path / "runs"
  cmd = _tiny_tuner(
    tmp_path, "--trials=1", "--config.train.max_epochs=40 --config.train.checkpoint_every_seconds=0"
  )
  env = dict(os.environ, PYTHONPATH=ROOT)
  proc = subprocess.Popen(cmd, cwd=ROOT, env=env, start_new_session=True)
  deadline, metrics = time.time() + 300, None
  while time.time() < deadline and metrics is None:
    found = list(runs.glob("*/metrics.jsonl"))
    if found and len(found[0].read_text().splitlines()) >= 3:
      metrics = found[0]
    time.sleep(0.2)
  assert metrics is not None, "trial 0 did not start"
  os.kill(proc.pid, signal.SIGINT)
  proc.wait(120)
  first = json.loads((metrics.parent / runner.WALL_FILE).read_text())
  assert first["segments"] == 1 and first["wall_seconds"] > 0
  subprocess.run(cmd, cwd=ROOT, env=env, check=True, timeout=600)
  done = [t for t in _study(str(tmp_path / "tuning")).trials if t.state == TrialState.COMPLETE]
  assert len(done) == 1 and done[0].user_attrs.get("retry_of") == 0
  assert done[0].user_attrs["wall_segments"] == 2
  assert not (metrics.parent / runner.WALL_FILE).exists()  # counted once, in this trial
  second = (done[0].datetime_complete - done[0].datetime_start).total_seconds()
  assert done[0].user_attrs["wall_seconds"] - first["wall_seconds"] == pytest.approx(second, abs=2)


@pytest.mark.slow
def test_parallel_trials_train_at_the_same_time_and_fill_the_budget(tmp_path):
  tuning = tmp_path / "tuning"
  cmd = _tiny_tuner(tmp_path, "--trials=3", "--config.train.max_epochs=6") + ["--parallel=2"]
  env = dict(os.environ, PYTHONPATH=ROOT)
  subprocess.run(cmd, cwd=ROOT, env=env, check=True, timeout=600)
  trials = _study(str(tuning)).trials
  assert [t.state for t in trials] == [TrialState.COMPLETE] * 3  # 2 at once, then the last 1
  first, second = trials[0], trials[1]
  assert first.datetime_start < second.datetime_complete
  assert second.datetime_start < first.datetime_complete  # they overlapped
  assert len({t.user_attrs["run"] for t in trials}) == 3


def test_quick_mode_uses_the_shared_runner_commands(tmp_path):
  run = runner.Run("synthetic", "lightgcn-tune-x", "lightgcn", ("--config.train.lr=0.01",))
  assert run.command("W")[2:4] == ["cikg_jax.main", "--config=configs/lightgcn.py:synthetic"]


def test_failed_trials_are_queued_again_at_most_twice_and_settled_ones_never():
  import optuna
  from optuna.distributions import FloatDistribution
  from optuna.trial import TrialState, create_trial

  study = optuna.create_study(direction="maximize")
  dist = {"lr": FloatDistribution(1e-4, 1e-2, log=True)}

  def add(lr, state, value=None):
    study.add_trial(create_trial(params={"lr": lr}, distributions=dist, state=state, value=value))

  study.add_trial(  # the published configuration, failed once: queued again, still published
    create_trial(
      params={"lr": 1e-3}, distributions=dist, state=TrialState.FAIL, user_attrs={"published": True}
    )
  )
  add(2e-3, TrialState.FAIL)  # failed, then completed: settled
  add(2e-3, TrialState.COMPLETE, 0.5)
  for _ in range(3):  # failed three times: left alone
    add(3e-3, TrialState.FAIL)
  lines = []
  tune.requeue_interrupted(study, lines.append)
  waiting = [t for t in study.trials if t.state == TrialState.WAITING]
  assert [(tune._params(t), t.user_attrs) for t in waiting] == [
    ({"lr": 1e-3}, {"published": True, "retry_of": 0})
  ]
  assert any("failed 3 times" in line for line in lines)
  tune.requeue_interrupted(study, lines.append)  # queued once, not twice
  assert sum(t.state == TrialState.WAITING for t in study.trials) == 1


def test_a_resumed_study_draws_new_points_and_repeats_count_once(tmp_path):
  """Each invocation seeds the sampler by the trials so far: with one seed for every invocation,
  a study resumed during its random start-up proposed its first points again. A configuration
  tried twice (as happened so) counts once towards the budget and in the summary."""
  from optuna.distributions import FloatDistribution
  from optuna.trial import create_trial

  def first_proposal():
    study = tune.load_study("synthetic", "lightgcn", str(tmp_path), 1)
    trial = study.ask()
    lr = trial.suggest_float("lr", 1e-4, 1e-2, log=True)
    study.tell(trial, 0.5)
    return lr

  a, b = first_proposal(), first_proposal()
  assert a != b
  study = tune.load_study("synthetic", "lightgcn", str(tmp_path), 1)
  assert tune.counted(study) == 2
  dist = {"lr": FloatDistribution(1e-4, 1e-2, log=True)}
  study.add_trial(create_trial(params={"lr": a}, distributions=dist, value=0.9))  # a repeat
  study.add_trial(create_trial(params={"lr": b}, distributions=dist, state=TrialState.PRUNED))
  assert tune.counted(study) == 2
  summary = tune.summarize(study)
  assert (summary["complete"], summary["pruned"]) == (2, 0)
  assert summary["best_value"] == 0.5  # the repeat's value is not a trial of its own


def test_result_files_do_not_make_the_tree_dirty(tmp_path):
  """git_commit marks a tree dirty for code, not for the result files runs append to."""
  import shutil

  repo = tmp_path / "repo"
  (repo / "experiments" / "results").mkdir(parents=True)
  for args in (["init", "-q"], ["config", "user.email", "t@t"], ["config", "user.name", "t"]):
    subprocess.run(["git", *args], cwd=repo, check=True)
  (repo / "code.py").write_text("x = 1\n")
  (repo / "experiments" / "results" / "rows.jsonl").write_text("{}\n")
  subprocess.run(["git", "add", "-A"], cwd=repo, check=True)
  subprocess.run(["git", "commit", "-qm", "c"], cwd=repo, check=True)
  shutil.copy(runner.__file__, repo / "experiments" / "runner.py")
  run = lambda: subprocess.run(
    [sys.executable, "-c", "import runner; print(runner.git_commit())"],
    cwd=repo / "experiments",
    capture_output=True,
    text=True,
    env={k: v for k, v in os.environ.items() if k != "CIKG_COMMIT"},
  ).stdout.strip()
  (repo / "experiments" / "results" / "rows.jsonl").write_text("{}\n{}\n")
  assert not run().endswith("+dirty")
  (repo / "code.py").write_text("x = 2\n")
  assert run().endswith("+dirty")


def _finished_study(tuning_dir, dataset, model, points):
  """A journal whose trials are `points`: (params, value or None for pruned)."""
  from optuna.distributions import CategoricalDistribution, FloatDistribution
  from optuna.trial import create_trial

  study = tune.load_study(dataset, model, str(tuning_dir), 1)
  for params, value in points:
    dist = {
      k: CategoricalDistribution(tune.SEARCH_SPACES[model][k][2])
      if tune.SEARCH_SPACES[model][k][1] == "categorical"
      else FloatDistribution(1e-6, 1e-1, log=True)
      for k in params
    }
    state = TrialState.COMPLETE if value is not None else TrialState.PRUNED
    study.add_trial(create_trial(params=params, distributions=dist, value=value, state=state))


def test_tuned_is_the_best_complete_trial_of_a_finished_study_only(tmp_path):
  points = [({"lr": 1e-3, "l2": 1e-5}, 0.4), ({"lr": 2e-3, "l2": 1e-5}, 0.6)]
  _finished_study(tmp_path, "dbbook2014", "simgcl", points + [({"lr": 3e-3, "l2": 1e-4}, None)])
  assert tune.tuned("dbbook2014", "simgcl", str(tmp_path), trials=3) is None  # no report yet
  tune.report(str(tmp_path), str(tmp_path / "summary.md"))  # writes best.json beside it
  assert tune.tuned("dbbook2014", "simgcl", str(tmp_path), trials=4) is None  # 3 counted
  assert tune.tuned("dbbook2014", "simgcl", str(tmp_path), trials=3) == {"lr": 2e-3, "l2": 1e-5}
  assert tune.tuned("dbbook2014", "lightgcn", str(tmp_path), trials=1) is None  # no journal


def test_tuned_table_runs_name_their_configuration(tmp_path, monkeypatch):
  """Five seeds of each finished study's best configuration, the variant named by it (a better
  configuration found later makes other runs); KGAT's pretraining flag names the tuner's BPR-MF
  run; unfinished studies are left out; render keeps only the current configurations' rows."""
  from experiments import render, tuned_table

  kgat = {"lr": 1e-3, "l2": 1e-5, "layers": "(64,32)", "pretrain": True}
  _finished_study(tmp_path, "dbbook2014", "kgat", [(kgat, 0.5)])
  _finished_study(tmp_path, "dbbook2014", "lightgcn", [({"lr": 1e-3, "l2": 1e-5}, 0.5)])
  tune.report(str(tmp_path), str(tmp_path / "summary.md"))
  monkeypatch.setattr(tune, "TUNING", str(tmp_path))
  monkeypatch.setattr(tune, "TRIALS", 1)
  runs = tuned_table.runs(["dbbook2014"], tuned_table.SEEDS)
  assert sorted({r.seed for r in runs}) == sorted(tuned_table.SEEDS) and len(runs) == 10
  by_model = {r.model: r for r in runs if r.seed == 2024}
  assert set(by_model) == {"kgat", "lightgcn"}  # CIKGRec and SimGCL: no finished study here
  k = by_model["kgat"]
  assert k.variant == f"kgat-tuned{tune.params_id(kgat)}-valid"
  assert "--config.kgat.pretrain=runs/tune/dbbook2014__bprmf-pretrain__s2024" in k.flags
  assert {
    "--config.train.lr=0.001",
    "--config.kge.lr=0.001",
    "--config.kgat.layers=(64,32)",
  } <= set(k.flags)
  assert "--config.selection=valid" in k.flags
  quick = runner.quick([k])[0]  # smoke mode does not train the BPR-MF run
  assert quick.dataset == "synthetic"
  assert not any(f.startswith("--config.kgat.pretrain=") for f in quick.flags)
  own = runner.quick([k], keep_datasets=True)[0]
  assert own.dataset == "dbbook2014"
  assert not any(f.startswith("--config.kgat.pretrain=") for f in own.flags)
  rows = [
    {"_dataset": "dbbook2014", "_variant": k.variant},
    {"_dataset": "dbbook2014", "_variant": "kgat-tuned0123456789-valid"},  # an earlier best
  ]
  assert render.current_tuned(rows, ["dbbook2014"]) == rows[:1]


def test_committed_best_configurations_are_those_of_the_committed_journals():
  """experiments/results/tuning/best.json (what the tuned table reads, without Optuna) is
  regenerated with the summary by `tune.py --report`; a stale copy fails here."""
  with open(os.path.join(tune.TUNING, tune.BEST_FILE), encoding="utf-8") as f:
    assert f.read() == tune.best_file_text(tune.summaries(tune.TUNING))


def test_a_failed_queued_trial_stops_the_tuner(tmp_path, monkeypatch):
  """The published configuration and retries are queued before a batch starts: their failure
  must stop the tuner as a new trial's does (not be skipped while it samples on)."""

  class Failing:
    def __init__(self, *args):
      pass

    def __call__(self, trial):
      raise RuntimeError("the run failed")

  study = tune.load_study("synthetic", "lightgcn", str(tmp_path), 1)
  study.enqueue_trial({"lr": 1e-3, "l2": 1e-5, "num_layers": 2})
  monkeypatch.setattr(tune, "Objective", Failing)
  lines = []
  tune.tune(
    "synthetic",
    "lightgcn",
    trials=3,
    tuning_dir=str(tmp_path),
    runs_dir=str(tmp_path / "runs"),
    log=lines.append,
  )
  trials = _study(str(tmp_path)).trials
  assert [t.state for t in trials] == [TrialState.FAIL]
  assert any("trial(s) [0] failed; stopping" in x for x in lines), lines


def test_a_fresh_checkout_trains_the_committed_pretraining_run_again(tmp_path):
  """The BPR-MF run that pretrained KGAT configurations start from is committed as a record
  only; its checkpoints live under runs/. Without them the run is trained again (not skipped as
  done), recorded beside its work directory, and compared with the committed record."""
  import shutil

  tuning, runs = str(tmp_path / "tuning"), str(tmp_path / "runs")
  extra = ["--config.train.max_epochs=2", "--config.train.min_epochs=1"]
  logged = []
  tune.train_pretrain_run("synthetic", runs, tuning, extra, log=logged.append)
  name = tune.pretrain_run("synthetic").name
  committed = os.path.join(tuning, "pretrain", "pretrain", f"{name}.json")
  assert os.path.exists(committed) and os.path.isdir(os.path.join(runs, name, "checkpoints"))
  shutil.rmtree(runs)  # a fresh checkout: the record is there, the run directory is not
  logged.clear()
  tune.train_pretrain_run("synthetic", runs, tuning, extra, log=logged.append)
  assert os.path.isdir(os.path.join(runs, name, "checkpoints"))
  assert os.path.exists(os.path.join(runs, "pretrain-retrained", "pretrain", f"{name}.json"))
  assert any("retrained, identical to the committed" in m for m in logged), logged
  logged.clear()
  tune.train_pretrain_run("synthetic", runs, tuning, extra, log=logged.append)  # present: nothing
  assert logged == []

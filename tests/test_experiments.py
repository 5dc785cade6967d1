"""The study runner (skips finished runs, trains a shared run once, records provenance, keeps
budget-paused runs out of the results) and the results renderer (docs/results.md from files,
--check)."""

import dataclasses
import json
import logging
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from cikg_jax.training import rundir
from experiments import main_table, render, runner, tuned_table, user_knowledge

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_FAKE_TRAIN = r"""
import json, os, sys
wd = [a.split("=", 1)[1] for a in sys.argv if a.startswith("--workdir=")][0]
seed = int([a.split("=", 1)[1] for a in sys.argv if a.startswith("--config.seed=")][0])
paused = any(a.startswith("--config.train.max_seconds=") for a in sys.argv) and seed == 99
os.makedirs(wd, exist_ok=True)
if seed == 98:  # pauses once, after 0.3 s, then finishes after another 0.3 s when resumed
  import time
  time.sleep(0.3)
  paused = not os.path.exists(os.path.join(wd, "calls.txt"))
with open(os.path.join(wd, "calls.txt"), "a") as f:
  f.write("x\n")
res = {"best_epoch": 3, "epochs_run": 4, "test": {"recall@20": 0.1 + seed / 1000},
       "stop_reason": "time budget of 5 s reached" if paused else "early stopping"}
json.dump(res, open(os.path.join(wd, "results.json"), "w"))
"""


@dataclasses.dataclass(frozen=True)
class FakeRun(runner.Run):
  def command(self, workdir, extra=()):
    return [
      sys.executable,
      "-c",
      _FAKE_TRAIN,
      f"--workdir={workdir}",
      *self.flags,
      f"--config.seed={self.seed}",
      *extra,
    ]


def test_runner_trains_shared_runs_once_skips_done_and_records_provenance(tmp_path):
  results, runs_dir = str(tmp_path / "results"), str(tmp_path / "runs")
  a = FakeRun("toy", "m-valid", "cikgrec", ("--config.x=1",), 1)
  b = FakeRun("toy", "m-valid", "cikgrec", ("--config.x=1",), 2)
  counts = runner.run_grid(
    [("s1", a), ("s2", a), ("s1", b)],
    results_dir=results,
    runs_dir=runs_dir,
    parallel=2,
    machine="test box",
    log=lambda s: None,
  )
  assert counts["done"] == 2
  with open(os.path.join(runs_dir, a.name, "calls.txt")) as f:
    assert len(f.read().split()) == 1  # trained once for both studies
  rec = json.load(open(os.path.join(results, "s2", f"{a.name}.json")))
  assert rec["study"] == "s2" and rec["machine"] == "test box" and rec["seed"] == 1
  assert rec["commit"] and rec["wall_seconds"] >= 0
  from cikg_jax import runtime

  assert rec["host"]["cpu_model"] == runtime.machine()["cpu_model"]  # read, not typed
  assert rec["host"]["vector_extensions"] == runtime.machine()["vector_extensions"]
  assert rec["command"].startswith("python -c") and "<workdir>" in rec["command"]
  # a second invocation trains nothing; a third study copies the finished result
  again = runner.run_grid(
    [("s1", a), ("s1", b), ("s3", b)], results_dir=results, runs_dir=runs_dir, log=lambda s: None
  )
  assert again["done"] == 0 and again["skipped"] == 2 and again["copied"] == 1
  # another command under the same name is not mistaken for the finished run
  changed = FakeRun("toy", "m-valid", "cikgrec", ("--config.x=2",), 1)
  assert runner.find_result(changed, results) is None


def test_runner_records_the_wall_time_of_every_segment_of_a_resumed_run(tmp_path):
  results, runs_dir = str(tmp_path / "results"), str(tmp_path / "runs")
  r = FakeRun("toy", "m-valid", "cikgrec", (), 98)
  first = runner.run_grid([("s", r)], results_dir=results, runs_dir=runs_dir, log=lambda s: None)
  assert first["paused"] == 1
  second = runner.run_grid([("s", r)], results_dir=results, runs_dir=runs_dir, log=lambda s: None)
  assert second["done"] == 1
  path = os.path.join(results, "s", f"{r.name}.json")
  rec = json.load(open(path))
  assert rec["wall_segments"] == 2 and rec["wall_seconds"] >= 0.6
  # recorded segments are not counted again by a later run in the same directory
  assert not os.path.exists(os.path.join(runs_dir, r.name, runner.WALL_FILE))
  os.remove(path)
  runner.run_grid([("s", r)], results_dir=results, runs_dir=runs_dir, log=lambda s: None)
  again = json.load(open(path))
  assert again["wall_segments"] == 1 and again["wall_seconds"] < rec["wall_seconds"]


def test_a_fresh_start_in_a_run_directory_deletes_its_paused_wall_time(tmp_path):
  """--config.train.resume=False deletes a run's files (rundir.clear): the runner's wall time of
  the deleted run's paused segments too, so the new run does not count them."""
  runner.wall_time(str(tmp_path), 12.0, keep=True)
  assert runner.WALL_FILE in rundir.clear(str(tmp_path))
  assert runner.wall_time(str(tmp_path), 1.0, keep=False) == {"wall_seconds": 1.0, "segments": 1}


def test_runner_does_not_record_a_run_paused_by_the_deadline(tmp_path):
  results = str(tmp_path / "results")
  r = FakeRun("toy", "m-valid", "cikgrec", (), 99)
  import time

  counts = runner.run_grid(
    [("s", r)],
    results_dir=results,
    runs_dir=str(tmp_path / "runs"),
    deadline=time.time() + 600,
    log=lambda s: None,
  )
  assert counts["paused"] == 1 and not os.path.exists(os.path.join(results, "s", f"{r.name}.json"))
  late = runner.run_grid(
    [("s", r)],
    results_dir=results,
    runs_dir=str(tmp_path / "runs"),
    deadline=time.time() + 5,
    min_run_seconds=30,
    log=lambda s: None,
  )
  assert late["not_started"] == 1


def test_a_second_runner_on_a_study_is_refused_before_training(tmp_path):
  results, runs_dir = str(tmp_path / "results"), str(tmp_path / "runs")
  r = FakeRun("toy", "m-valid", "cikgrec", (), 1)
  os.makedirs(os.path.join(results, "s"))
  with rundir.hold(os.path.join(results, "s"), holder="experiment runner", hint="wait"):
    with pytest.raises(rundir.RunError, match=r"results/s is in use by another experiment runner"):
      runner.run_grid([("s", r)], results_dir=results, runs_dir=runs_dir, log=lambda s: None)
  assert not os.path.exists(os.path.join(runs_dir, r.name))  # nothing was trained
  assert runner.run_grid([("s", r)], results_dir=results, runs_dir=runs_dir)["done"] == 1


def test_runner_waits_for_a_training_still_holding_the_run_directory(tmp_path):
  """A training of a killed runner may still hold its directory while it stops: the next runner
  waits for it instead of starting a training the lock refuses (a failed run)."""
  results, runs_dir = str(tmp_path / "results"), str(tmp_path / "runs")
  r = FakeRun("toy", "m-valid", "cikgrec", (), 1)
  wd = os.path.join(runs_dir, r.name)
  os.makedirs(wd)
  hold = (
    "import sys, time; from cikg_jax.training import rundir\n"
    "with rundir.locked(sys.argv[1]):\n  print('held', flush=True); time.sleep(3)"
  )
  holder = subprocess.Popen(
    [sys.executable, "-c", hold, wd], cwd=ROOT, stdout=subprocess.PIPE, text=True
  )
  assert holder.stdout.readline() == "held\n"
  lines = []
  counts = runner.run_grid([("s", r)], results_dir=results, runs_dir=runs_dir, log=lines.append)
  assert holder.poll() == 0  # it had stopped before the run started
  assert counts["done"] == 1 and counts["failed"] == 0
  assert any(f"waiting for the training that holds {wd} to stop" in x for x in lines)


def test_a_run_stops_when_the_process_that_started_it_dies(tmp_path):
  """runner.child_env names the starting process; cikg_jax.runtime.stop_with_parent (the training
  CLI's first step) then ends the run with that process, so a killed runner or tuner leaves no
  training behind. Without the variable the child outlives its parent, as any process does."""
  child = (
    "import sys, time; from cikg_jax import runtime; runtime.stop_with_parent()\n"
    "print('ready', flush=True); time.sleep(60)"
  )
  parent = (
    "import os, subprocess, sys; from experiments import runner\n"
    "env = runner.child_env() if sys.argv[2] == 'stop' else dict(os.environ)\n"
    "p = subprocess.Popen([sys.executable, '-c', sys.argv[1]], env=env, stdout=subprocess.PIPE,"
    " text=True, start_new_session=True)\n"
    "assert p.stdout.readline() == 'ready\\n'\n"
    "print(p.pid, flush=True); p.stdout.close(); import time; time.sleep(60)"
  )

  def child_alive_after_parent_killed(mode):
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.Popen(
      [sys.executable, "-c", parent, child, mode], cwd=ROOT, env=env, stdout=subprocess.PIPE
    )
    pid = int(proc.stdout.readline())
    proc.kill()
    proc.wait()
    for _ in range(50):
      if not os.path.exists(f"/proc/{pid}") or "Z" in open(f"/proc/{pid}/stat").read().split()[2]:
        return False
      time.sleep(0.1)
    os.kill(pid, 9)
    return True

  assert not child_alive_after_parent_killed("stop")
  assert child_alive_after_parent_killed("plain")
  # a stray variable (naming no parent of the run) ends the run with one line, not silently
  stray = subprocess.run(
    [sys.executable, "-c", "from cikg_jax import runtime; runtime.stop_with_parent()"],
    cwd=ROOT,
    env=dict(os.environ, PYTHONPATH=ROOT, CIKG_STOP_WITH_PID="1"),
    capture_output=True,
    text=True,
  )
  assert stray.returncode == 1
  assert stray.stderr.startswith("error: CIKG_STOP_WITH_PID=1 names no parent of this run")


def test_runner_progress_goes_to_the_log_not_stdout(tmp_path, capsys, caplog):
  caplog.set_level(logging.INFO, logger="cikg_jax")
  r = FakeRun("toy", "m-valid", "cikgrec", (), 1)
  runner.run_grid([("s", r)], results_dir=str(tmp_path / "res"), runs_dir=str(tmp_path / "runs"))
  assert capsys.readouterr().out == ""
  assert f"[s] start {r.name}" in caplog.text and f"[s] done {r.name}" in caplog.text


def test_study_definitions_share_runs_by_name_and_command():
  mt = {r.name: r for r in main_table.runs(["dbbook2014"], [2024])}
  uk = {r.name: r for r in user_knowledge.runs(["dbbook2014"], [2024])}
  shared = "dbbook2014__cikgrec-paper-valid__s2024"
  assert mt[shared].command("w") == uk[shared].command("w")
  from experiments import ablations

  ab = {r.name: r for r in ablations.runs(["dbbook2014", "book-crossing"], [2024])}
  assert ab[shared].command("w") == mt[shared].command("w")
  assert "book-crossing__cikgrec-no_transe__s2024" not in ab  # book-crossing has no TransE
  # seeds 3 and 4: the unconfounded contrast only, the same runs as the user-side-knowledge study's
  later = {r.name: r for r in ablations.runs(["dbbook2014"], [3, 4])}
  assert {r.variant for r in later.values()} == set(ablations.UNCONFOUNDED)
  uk_later = {r.name: r for r in user_knowledge.runs(["dbbook2014"], [3, 4])}
  assert all(later[n].command("w") == uk_later[n].command("w") for n in later)
  quick = runner.quick(list(ab.values()))
  assert {r.dataset for r in quick} == {"synthetic"} and len(quick) == len(
    {r.variant for r in quick}
  )


def _result(dataset, variant, seed, recall, groups=True):
  g = [
    {"group": i, "n_users": 10, "train_interactions": [i, i + 1], "recall@20": recall * (i + 1) / 4}
    for i in range(4)
  ]
  return {
    "test": {m: recall for m in render.METRICS},
    "best_epoch": 10,
    "epochs_run": 20,
    "machine": "box",
    "commit": "abc",
    "test_groups": g if groups else None,
    "test_groups_equal_interactions": g if groups else None,
  }


def _write(results, study, dataset, variant, seed, recall):
  os.makedirs(os.path.join(results, study), exist_ok=True)
  with open(os.path.join(results, study, f"{dataset}__{variant}__s{seed}.json"), "w") as f:
    json.dump(_result(dataset, variant, seed, recall), f)


def test_render_tables_mean_std_improvement_and_significance(tmp_path):
  results = str(tmp_path)
  for seed, (c, lg, s) in zip(
    (2024, 1, 2), ((0.30, 0.26, 0.27), (0.31, 0.27, 0.28), (0.29, 0.26, 0.27))
  ):
    _write(results, "main_table", "dbbook2014", "cikgrec-paper-valid", seed, c)
    _write(results, "main_table", "dbbook2014", "lightgcn-valid", seed, lg)
    _write(results, "main_table", "dbbook2014", "simgcl-valid", seed, s)
  text = render.section(results, plots=False)
  cik = np.array([0.30, 0.31, 0.29])
  assert f"{cik.mean():.4f} ± {cik.std(ddof=1):.4f}" in text
  best = np.array([0.27, 0.28, 0.27])
  assert f"{100 * (cik.mean() / best.mean() - 1):+.1f}% over SimGCL" in text
  from scipy import stats

  # paired t over the 3 seeds by hand: differences 0.03, 0.03, 0.02 (t = 8.0, 2 df); Holm over
  # the two tests of the sentence (R@20 and N@20, equal here): twice the smaller p
  d = cik - best
  t = d.mean() / (d.std(ddof=1) / np.sqrt(3))
  assert t == pytest.approx(8.0)
  p = 2 * stats.t.sf(t, 2)
  assert f"Holm-adjusted p = {render.fmt_p(min(1.0, 2 * p))}" in text
  assert "Minimum detectable difference" in text
  assert "Not yet run" in text and "kgat-valid ×3" in text  # missing runs are named


def test_holm_and_minimum_detectable_difference_by_hand():
  assert render.holm([0.01, 0.04, 0.03, None]) == pytest.approx([0.03, 0.06, 0.06, None])
  assert render.holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])
  # n = 5 pairs, sd of differences 0.01: (t_.975,4 + t_.8,4) * 0.01 / sqrt(5) = 3.7172 * 0.004472
  assert render.min_detectable([0.01], 5) == pytest.approx(0.016624, abs=2e-6)
  assert render.min_detectable([0.01, 0.02], 5) == pytest.approx(
    0.016624 * np.sqrt((1 + 4) / 2), rel=1e-4
  )
  assert render.min_detectable([0.01], 1) is None


def test_paired_tests_use_the_seeds_both_arms_ran():
  a = [{"_seed": s, "test": {"recall@20": v}} for s, v in ((1, 0.30), (2, 0.31), (3, 0.29))]
  b = [{"_seed": s, "test": {"recall@20": v}} for s, v in ((2, 0.28), (3, 0.27), (4, 0.5))]
  x, y = render.paired(a, b, render.test_value("recall@20"))
  np.testing.assert_allclose(x, [0.31, 0.29])
  np.testing.assert_allclose(y, [0.28, 0.27])
  assert render.paired_p(a[:1], b, render.test_value("recall@20")) is None


def test_ablation_delta_is_over_the_seeds_both_rows_ran(tmp_path):
  """The full model has five seeds, a variant three: Δ is the mean per-seed difference over the
  three, as its p-value pairs them, not a difference of means over different seeds."""
  results = str(tmp_path)
  for seed, r in zip((2024, 1, 2, 3, 4), (0.30, 0.31, 0.29, 0.40, 0.40)):
    _write(results, "ablations", "dbbook2014", "cikgrec-paper-valid", seed, r)
  for seed, r in zip((2024, 1, 2), (0.28, 0.30, 0.28)):
    _write(results, "ablations", "dbbook2014", "cikgrec-no_cl", seed, r)
  text = render.section(results, plots=False)
  line = [x for x in text.splitlines() if x.startswith("| w/o contrastive learning |")][0]
  assert "| 3 | 0.2867 ± 0.0115 |" in line and "| -0.0133 |" in line  # not -0.0533
  # without interest nodes (5 seeds) against without reconstruction (4): the pairs are stated
  for seed, r in zip((2024, 1, 2, 3, 4), (0.29, 0.30, 0.28, 0.29, 0.30)):
    _write(results, "ablations", "dbbook2014", "cikgrec-no_interest", seed, r)
  for seed, r in zip((2024, 1, 2, 3), (0.31, 0.31, 0.30, 0.30)):
    _write(results, "ablations", "dbbook2014", "cikgrec-no_uir", seed, r)
  lines = render.section(results, plots=False).splitlines()
  vs_row = [x for x in lines if x.startswith("| w/o interest nodes vs w/o interest reconstr")][0]
  assert vs_row.split(" | ")[1] == "5 (4 paired)"
  alone = [x for x in lines if x.startswith("| w/o interest nodes (and so")][0]
  assert alone.split(" | ")[1] == "5"
  # one detectable difference for each number of pairs the table's tests have: 3, 4 and 5
  mdd = [x for x in lines if x.startswith("Minimum detectable")][0]
  assert [k in mdd for k in ("with 3 paired", "with 4 paired", "with 5 paired")] == [True] * 3


def test_minimum_detectable_difference_note_per_number_of_pairs():
  one = render.mdd_note([0.01], 5)
  assert "(paired t, 5 seeds," in one and one.endswith(": 0.0166.")
  two = render.mdd_note([0.01], [3, 5, 5, 1])
  m3, m5 = render.min_detectable([0.01], 3), render.min_detectable([0.01], 5)
  assert two.endswith(f": {m3:.4f} with 3 paired seeds, {m5:.4f} with 5 paired seeds.")
  assert render.mdd_note([0.01], [1]) == ""


def test_render_check_refuses_conclusions_citing_numbers_not_in_the_tables(tmp_path):
  results = str(tmp_path / "results")
  for seed, r in zip((2024, 1, 2), (0.30, 0.31, 0.29)):
    _write(results, "ablations", "dbbook2014", "cikgrec-paper-valid", seed, r)
  table = render.section(results, plots=False)
  assert "0.3000 ± 0.0100" in table
  readme = tmp_path / "README.md"
  readme.write_text("# x\n")

  def check(prose):
    doc = tmp_path / "results.md"
    doc.write_text(
      f"# x\n\n{table}\n\n{render.PROSE_BEGIN} (checked) -->\n{prose}\n{render.PROSE_END}\n"
    )
    return render.main(["--check", "--results", results, "--doc", str(doc), "--cite", str(readme)])

  assert check("Recall@20 is 0.3000 ± 0.0100 over three seeds.") == 0
  assert check("Recall@20 is 0.3001 over three seeds.") == 1  # drifted by one digit
  assert check("A gain of +7.6% over LightGCN.") == 1
  assert render.unsupported_numbers(
    f"{table}\n{render.PROSE_BEGIN} -->\n0.30 and 0.3000, -0.0100\n{render.PROSE_END}"
  ) == ["0.30"]
  # A second page's summary (the README's) is checked against the same tables, block by block.
  summary = f"{render.PROSE_BEGIN} -->\nRecall@20 {{}}.\n{render.PROSE_END}\n"
  readme.write_text(
    "# x\n\n" + summary.format("0.3000") + "\ntext 0.1234\n" + summary.format("0.30")
  )
  assert check("Recall@20 is 0.3000.") == 1
  assert render.unsupported_numbers(readme.read_text(), table) == ["0.30"]
  readme.write_text("# x\n\n" + summary.format("0.3000") + "\ntext 0.1234 outside the blocks\n")
  assert check("Recall@20 is 0.3000.") == 0


def test_render_check_detects_a_stale_results_page(tmp_path):
  doc = tmp_path / "results.md"
  doc.write_text(f"# x\n\n{render.BEGIN}\nold\n{render.END}\n\nrest\n")
  results = str(tmp_path / "results")
  _write(results, "ablations", "dbbook2014", "cikgrec-paper-valid", 2024, 0.3)
  argv = ["--results", results, "--doc", str(doc), "--cite", str(doc)]
  assert render.main(["--check"] + argv) == 1
  assert render.main(argv) == 0
  assert render.main(["--check"] + argv) == 0
  assert doc.read_text().endswith("\n\nrest\n")


def test_repository_results_page_and_readme_summary_agree_with_the_committed_results():
  """docs/results.md holds the generated tables; its conclusions and the README's results summary
  cite only numbers those tables show."""
  proc = subprocess.run(
    [sys.executable, "experiments/render.py", "--check"], cwd=ROOT, capture_output=True, text=True
  )
  assert proc.returncode == 0, proc.stderr
  readme = open(os.path.join(ROOT, "README.md")).read()
  assert render.prose_blocks(readme), "the README's results summary has no conclusions block"
  assert render.BEGIN not in readme  # the tables live in docs/results.md only


@pytest.mark.slow
def test_every_study_runs_in_quick_mode(tmp_path):
  """CI's experiments step: each study script's smoke mode trains every variant for 2 epochs on the
  tiny synthetic dataset through the real CLI, and the renderer reads what they wrote."""
  proc = subprocess.run(
    [
      sys.executable,
      "experiments/grid.py",
      "--quick",
      "--studies",
      "main_table,user_knowledge,ablations,schedules,kappa,tuned_table",
      "--parallel",
      "2",
      "--runs-dir",
      str(tmp_path / "runs"),
      "--results-dir",
      str(tmp_path / "results"),
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=1800,
  )
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  counts = json.loads(proc.stdout)  # the result on stdout; progress went to stderr
  assert counts["failed"] == 0 and counts["done"] > 0, proc.stderr[-3000:]
  assert "] start synthetic__" in proc.stderr
  for study in ("main_table", "user_knowledge", "ablations", "schedules", "kappa"):
    files = os.listdir(tmp_path / "results" / study)
    assert files and all(f.startswith("synthetic__") for f in files), (study, files)
  models = {
    json.load(open(tmp_path / "results" / "main_table" / f))["model"]
    for f in os.listdir(tmp_path / "results" / "main_table")
  }
  assert models == {"cikgrec", "lightgcn", "simgcl", "kgat"}
  # the tuned configurations of the committed studies, on the synthetic data
  tuned = os.listdir(tmp_path / "results" / "tuned_table")
  want = {r.variant for r in runner.quick(tuned_table.runs(runner.DATASETS, [2024]))}
  assert {f.split("__")[1] for f in tuned} == want, tuned


def _import_fixture_dataset(data_dir):
  from cikg_jax.data import convert

  src = os.path.join(ROOT, "tests", "data_fixtures", "kgat_dbpedia")
  convert.convert_kgat(src, os.path.join(data_dir, "mydata"))


@pytest.mark.parametrize("script", ["main_table", "ablations", "schedules", "user_knowledge"])
def test_study_scripts_accept_any_dataset_the_trainer_accepts(tmp_path, script):
  """A name without its own config gets the base values, as the trainer gives it."""
  proc = subprocess.run(
    [sys.executable, f"experiments/{script}.py", "--datasets=mydata", "--quick", "--list"],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=120,
    env=dict(os.environ, CIKG_DATA_DIR=str(tmp_path)),
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  lines = proc.stdout.splitlines()
  assert lines and all(" mydata__" in ln for ln in lines), lines
  assert any("--config=configs/base.py:mydata " in ln for ln in lines)
  assert all("--config.train.max_epochs=2" in ln for ln in lines)
  if script == "ablations":  # the base values take TransE steps: its ablation applies
    assert any("cikgrec-no_transe" in ln for ln in lines)
  if script == "main_table":
    assert any("--config=configs/kgat.py:mydata " in ln for ln in lines)


@pytest.mark.slow
def test_main_table_quick_trains_on_an_imported_dataset(tmp_path):
  _import_fixture_dataset(str(tmp_path / "data"))
  proc = subprocess.run(
    [
      sys.executable,
      "experiments/main_table.py",
      "--datasets=mydata",
      "--quick",
      "--parallel=2",
      f"--runs_dir={tmp_path / 'runs'}",
      f"--results_dir={tmp_path / 'results'}",
      "--extra=--config.selection=test --config.train.min_epochs=0",
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=1800,
    env=dict(os.environ, CIKG_DATA_DIR=str(tmp_path / "data")),
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert json.loads(proc.stdout)["failed"] == 0, proc.stderr[-3000:]
  done = os.listdir(tmp_path / "results" / "main_table")
  assert len(done) == 8 and all(f.startswith("mydata__") for f in done), done


_FAKE_RERUN_TRAIN = """
import json, os, sys
wd = [a.split("=", 1)[1] for a in sys.argv if a.startswith("--workdir=")][0]
shift = float(os.environ.get("FAKE_SHIFT", "0"))
os.makedirs(wd, exist_ok=True)
res = {"best_epoch": 3, "epochs_run": 4, "valid": {"recall@20": 0.2},
       "test": {"recall@20": 0.25 + shift, "ndcg@20": 0.1},
       "test_groups": [{"group": 0, "recall@20": 0.2}], "train_seconds": 9.0}
json.dump(res, open(os.path.join(wd, "results.json"), "w"))
"""


def test_default_machine_names_the_cpus_this_process_may_use(monkeypatch):
  """Under taskset a run uses fewer CPUs than the host has; the record must say which."""
  monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
  monkeypatch.setattr(os, "cpu_count", lambda: 8)
  assert runner.default_machine().endswith(", 8 cpu, 1 usable)")
  from cikg_jax import runtime

  assert f"({runtime.machine()['cpu_model'] or 'cpu'}, " in runner.default_machine()


def test_rerun_compares_every_reported_number_and_records_once(tmp_path, monkeypatch):
  from experiments import rerun

  script = tmp_path / "fake_train.py"
  script.write_text(_FAKE_RERUN_TRAIN)
  original = {
    "run": "toy__m-valid__s1",
    "commit": "abc123",
    "machine": "cpu: elsewhere",
    "command": f"python {script} --workdir=<workdir> --config.seed=1",
    "best_epoch": 3,
    "epochs_run": 4,
    "valid": {"recall@20": 0.2},
    "test": {"recall@20": 0.25, "ndcg@20": 0.1},
    "test_groups": [{"group": 0, "recall@20": 0.2}],
    "train_seconds": 120.0,  # timings are not compared
  }
  path = tmp_path / "results" / "study" / "toy__m-valid__s1.json"
  path.parent.mkdir(parents=True)
  path.write_text(json.dumps(original))
  args = ["--results_dir", str(tmp_path / "results"), "--runs_dir", str(tmp_path / "runs")]
  [rec] = rerun.main([str(path), "--machine", "test box"] + args)
  assert rec["identical"] and rec["compared"] == 7 and rec["max_abs_diff"] == 0
  assert rec["original_commit"] == "abc123" and rec["machine"] == "test box"
  assert rec["commit"] == runner.git_commit()
  # recorded once per commit: a second call reads the record instead of training
  monkeypatch.setenv("FAKE_SHIFT", "0.001")
  [again] = rerun.main([str(path)] + args)
  assert again == rec
  # a rerun that moves one number is not identical, and says which
  assert rec["cpus_usable"] == len(os.sched_getaffinity(0)) and rec["original_cpus_usable"] is None
  rec_path = rerun.record_path(
    str(tmp_path / "results"), original["run"], rec["commit"], rec["cpus_usable"]
  )
  assert os.path.exists(rec_path) and rec_path.endswith(f"__{rec['cpus_usable']}cpu.json")
  os.remove(rec_path)
  [moved] = rerun.main([str(path)] + args + ["--runs_dir", str(tmp_path / "runs2")])
  assert not moved["identical"] and moved["max_abs_diff_at"] == "test/recall@20"
  assert moved["differs_at"] == ["test/recall@20"] and rec["differs_at"] == []
  assert moved["max_abs_diff"] == pytest.approx(0.001)
  # and the renderer lists it under the table of the rows it reran
  lines = render.rerun_lines([{"run": original["run"]}], str(tmp_path / "results"))
  assert len(lines) == 1 and "differ" in lines[0] and "test/recall@20" in lines[0]


_FAKE_TRAIN_NEEDS_INPUT = """
import json, os, sys
wd = [a.split("=", 1)[1] for a in sys.argv if a.startswith("--workdir=")][0]
need = [a.split("=", 1)[1] for a in sys.argv if a.startswith("--config.kgat.pretrain=")][0]
if not os.path.exists(need):
  sys.exit(f"{need}: no such run")
os.makedirs(wd, exist_ok=True)
json.dump({"best_epoch": 1, "epochs_run": 2, "test": {"recall@20": 0.3}},
          open(os.path.join(wd, "results.json"), "w"))
"""


def test_rerun_makes_what_its_command_reads_from_runs_first(tmp_path, monkeypatch):
  """runs/ is not committed: a record whose command reads a run there (the BPR-MF run of a
  pretrained KGAT) reruns from a fresh checkout because its study's `prepare` makes it first."""
  import types

  from experiments import rerun

  script = tmp_path / "fake_train.py"
  script.write_text(_FAKE_TRAIN_NEEDS_INPUT)
  pretrained = tmp_path / "runs" / "tune" / "toy__bprmf-pretrain__s2024"
  calls = []

  def prepare(datasets, data_dir):
    calls.append(list(datasets))
    pretrained.mkdir(parents=True)

  monkeypatch.setitem(sys.modules, "experiments.fake_study", types.SimpleNamespace(prepare=prepare))
  original = {
    "run": "toy__kgat-valid__s1",
    "study": "fake_study",
    "dataset": "toy",
    "command": f"python {script} --workdir=<workdir> --config.kgat.pretrain={pretrained}",
    "best_epoch": 1,
    "epochs_run": 2,
    "test": {"recall@20": 0.3},
  }
  path = tmp_path / "results" / "fake_study" / "toy__kgat-valid__s1.json"
  path.parent.mkdir(parents=True)
  path.write_text(json.dumps(original))
  args = ["--results_dir", str(tmp_path / "results"), "--runs_dir", str(tmp_path / "runs" / "rr")]
  [rec] = rerun.main([str(path)] + args)
  assert calls == [["toy"]] and rec["identical"] and rec["compared"] == 3
  # a study without a script (the tuner's BPR-MF records) has nothing to make
  rerun.prepare_inputs({"study": "pretrain", "dataset": "toy"})


def test_committed_pretrained_kgat_records_name_the_run_their_study_prepares(monkeypatch):
  """Every committed record that starts KGAT from a BPR-MF run names the run that its study's
  `prepare` trains on a fresh checkout (checked without training: the trainer is replaced)."""
  from experiments import rerun, tune

  trained = []
  monkeypatch.setattr(tune, "train_pretrain_run", lambda d, *a, **k: trained.append(d))
  records = []
  for root, _, files in os.walk(runner.RESULTS):
    for name in files:
      if name.endswith(".json"):
        with open(os.path.join(root, name)) as f:
          rec = json.load(f)
        if not isinstance(rec, dict) or "rerun_of" in rec:  # reruns compare, they are not results
          continue
        if "--config.kgat.pretrain=" in str(rec.get("command", "")):
          records.append(rec)
  assert records, "the tuned KGAT rows of book-crossing start from BPR-MF"
  for rec in records:
    trained.clear()
    rerun.prepare_inputs(rec, data_dir="unused")
    target = rec["command"].split("--config.kgat.pretrain=")[1].split()[0]
    assert [tune.pretrain_dir(d) for d in trained] == [target], rec["run"]


def test_mixed_provenance_says_which_runs_come_from_which_device_and_commit():
  gpu, cpu = "1x NVIDIA H200, jax 0.11.2", "cpu: a 2-core AMD EPYC VM"
  rows = [
    {"dataset": "d", "variant": "full", "seed": s, "machine": gpu, "commit": "a" * 40}
    for s in (1, 2024, 2)
  ] + [
    {"dataset": "d", "variant": v, "seed": s, "machine": cpu, "commit": "b" * 40}
    for v in ("full", "none")
    for s in (4, 3)
  ]
  text = render.provenance(rows)
  assert "2 kind(s) of device (cpu (AMD EPYC), gpu (H200))" in text
  assert (
    f"Where: cpu (AMD EPYC) at {'b' * 12}: seeds 3, 4 of d full, d none | gpu (H200) at "
    f"{'a' * 12}: seeds 2024, 1, 2 of d full." in text
  )
  # the same commit on another CPU model is another origin: XLA compiles for the host's CPU
  xeon = dict(rows[-1], machine="cpu: a 2-core Intel Xeon VM (AVX-512)", seed=5)
  text = render.provenance(rows + [xeon])
  assert "3 kind(s) of device (cpu (AMD EPYC), cpu (Intel Xeon), gpu (H200))" in text
  assert f"cpu (Intel Xeon) at {'b' * 12}: seed 5 of d none" in text
  # a record's host, read from the system, outranks its typed machine text
  mistyped = dict(rows[-1], seed=6, host={"cpu_model": "Intel(R) Xeon(R) Processor"})
  text = render.provenance(rows + [mistyped])
  assert f"cpu (Intel Xeon) at {'b' * 12}: seed 6 of d none" in text
  assert render.device("box (8 cpu)", {"cpu_model": "Intel(R) Core(TM) i7-9700"}) == (
    "cpu (Intel Core i7-9700)"
  )
  assert "Where:" not in render.provenance(rows[:3])  # one origin: nothing to point at

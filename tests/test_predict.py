"""cikg-predict on an imported dataset: the dataset's own user and item ids and names, JSON or TSV,
k checked, known items never shown, the data found without the environment, one-line errors."""

import json
import os
import subprocess
import sys

import pytest

from cikg_jax import predict
from cikg_jax.data import convert
from cikg_jax.training import train
from configs import base

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DBP = os.path.join(os.path.dirname(__file__), "data_fixtures", "kgat_dbpedia")
R = "http://dbpedia.org/resource/"
# the hand-worked conversion of tests/test_convert.py: source movie id -> URI, users' known items
NAMES = {
  "2": R + "Am\u00e9lie",
  "11": R + "Le\u00a0Samoura\u00ef",
  "17": R + "Solaris_(1972_film)",
  "23": R + "Stalker_(1979_film)",
  "31": R + "Solaris_(1972_film)",
  "40": R + "Delicatessen_(film)",
}
TRAIN = {"1": {"2", "11", "40"}, "2": {"17", "23", "2"}, "3": {"31", "23", "11"}}


@pytest.fixture(scope="module")
def run(tmp_path_factory, monkeypatch_module):
  """CIKGRec for 2 epochs on the imported fixture, its data found through CIKG_DATA_DIR only."""
  tmp = tmp_path_factory.mktemp("predict")
  convert.convert_kgat(DBP, str(tmp / "data" / "movies"))
  c = base.get_config("movies")
  c.selection = "test"
  c.model.embed_dim = 8
  c.model.num_layers = 1
  c.train.max_epochs = 2
  c.train.min_epochs = 0
  c.train.plot = False
  c.uir.weight = 0.0
  monkeypatch_module.setenv("CIKG_DATA_DIR", str(tmp / "data"))
  workdir = str(tmp / "run")
  train.train_and_evaluate(c, workdir)
  monkeypatch_module.delenv("CIKG_DATA_DIR")
  return workdir


@pytest.fixture(scope="module")
def monkeypatch_module():
  mp = pytest.MonkeyPatch()
  yield mp
  mp.undo()


def _cli(*args):
  env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  env.pop("CIKG_DATA_DIR", None)
  return subprocess.run(
    [sys.executable, "-m", "cikg_jax.predict", *args],
    capture_output=True,
    text=True,
    cwd=ROOT,
    env=env,
    timeout=300,
  )


def test_the_run_records_its_data_dir(run):
  with open(os.path.join(run, "config.json")) as f:
    assert json.load(f)["data_dir"] == os.path.join(os.path.dirname(run), "data")


def test_predict_names_users_and_items_by_the_datasets_ids_as_json_and_tsv(run, capsys):
  predict.main([f"--workdir={run}", "--users=1,3", "--k=3"])
  got = json.loads(capsys.readouterr().out)
  assert list(got) == ["1", "3"]
  for user, recs in got.items():
    assert len(recs) == 3
    items = [r["item"] for r in recs]
    assert set(items) == set(NAMES) - TRAIN[user]  # every candidate, none of the known items
    assert all(r["name"] == NAMES[r["item"]] for r in recs)
    assert [r["score"] for r in recs] == sorted((r["score"] for r in recs), reverse=True)
  predict.main([f"--workdir={run}", "--users=2", "--k=2", "--format=tsv"])
  lines = capsys.readouterr().out.splitlines()
  assert lines[0] == "user\trank\titem\tname\tscore" and len(lines) == 3
  row = lines[1].split("\t")
  assert row[:2] == ["2", "1"] and row[2] in set(NAMES) - TRAIN["2"] and row[3] == NAMES[row[2]]


@pytest.fixture(scope="module")
def loaded(run):
  ds, net, graphs, params = predict.load_run(run)
  return ds, net, graphs, params, predict.Ids(ds)


@pytest.mark.parametrize(
  "users,k,message",
  [
    ("1", 4, "--k=4: must be 1..3 (user 1 has 3 candidate items"),
    ("1,2", 100000, "--k=100000: must be 1..3 (user 1 has 3 candidate items"),
    ("1", 0, "--k=0: must be 1..3"),
    ("1", -3, "--k=-3: must be 1..3"),
    ("abc", 1, "--users: unknown user 'abc' (not in "),
    ("0", 1, "--users: unknown user '0' (not in "),
    ("", 1, "--users: empty"),
    (" , ", 1, "--users: empty"),
  ],
)
def test_predict_refuses_bad_k_and_unknown_users(loaded, users, k, message):
  ds, net, graphs, params, ids = loaded
  with pytest.raises(predict.PredictError) as e:
    predict.scores_and_top_k(
      ds, net, graphs, params, ids.parse_users(users), k, ids.user_ids.__getitem__
    )
  assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_predict_cli_errors_are_one_line(run):
  with pytest.raises(SystemExit) as e:
    predict.main([f"--workdir={run}", "--users=7"])
  assert str(e.value.code).startswith("error: --users: unknown user '7' (not in ")


def _error(*args):
  with pytest.raises(SystemExit) as e:
    predict.main(list(args))
  assert str(e.value.code).startswith("error: ") and "\n" not in str(e.value.code)
  return str(e.value.code)


def test_predict_refuses_missing_runs_checkpoints_and_data_in_one_line(run, tmp_path, monkeypatch):
  monkeypatch.delenv("CIKG_DATA_DIR", raising=False)
  assert _error(f"--workdir={tmp_path}/nope", "--users=1") == (
    f"error: --workdir={tmp_path}/nope: no such directory"
  )
  os.makedirs(tmp_path / "empty")
  assert "no config.json there" in _error(f"--workdir={tmp_path}/empty", "--users=1")
  with open(os.path.join(run, "config.json")) as f:
    config = json.load(f)
  (tmp_path / "empty" / "config.json").write_text(json.dumps(config))
  assert "checkpoints: no checkpoint to predict from" in _error(
    f"--workdir={tmp_path}/empty", "--users=1"
  )
  config["data_dir"] = ""  # a run from before data_dir was recorded
  (tmp_path / "empty" / "config.json").write_text(json.dumps(config))
  assert "does not record where dataset 'movies' is: pass --data_dir=DIR" in _error(
    f"--workdir={tmp_path}/empty", "--users=1"
  )


def test_predict_command_runs_without_the_data_environment_variable(run):
  p = _cli(f"--workdir={run}", "--users=1", "--k=1", "--format=tsv")
  assert p.returncode == 0 and p.stdout.count("\n") == 2, p.stderr

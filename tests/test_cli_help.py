"""Every console script answers --help with its flags and exit status 0, in one flag style
(underscores; hyphenated spellings kept as aliases where they existed)."""

import os
import re
import subprocess
import sys

import pytest

try:
  import tomllib
except ImportError:  # Python 3.10
  tomllib = None

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _scripts():
  if tomllib is None:
    pytest.skip("tomllib needs Python 3.11")
  with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
    return tomllib.load(f)["project"]["scripts"]


SCRIPTS = {
  "cikg-train": ("--config", "--workdir", "--debug", "--config.train.lr", "configs/base.py"),
  "cikg-predict": ("--workdir", "--users", "--k", "--format", "--data_dir"),
  "cikg-convert": ("--src", "--out", "--item_ids", "--user_order", "--allow_unmatched_items"),
  "cikg-download": ("--dataset", "--out", "--base_url"),
  "cikg-generate": ("--config", "--requests_only", "--import_batch_output", "configs/llm/_base.py"),
  "cikg-structure": ("--run_dir", "--data_dir", "--kappa", "--out_dir"),
}


def test_the_list_covers_every_console_script():
  assert set(_scripts()) == set(SCRIPTS)


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_help_lists_the_flags_and_exits_0(name):
  module, func = _scripts()[name].split(":")
  p = subprocess.run(
    [
      sys.executable,
      "-c",
      f"import sys; sys.argv[0] = {name!r}; from {module} import {func}; {func}()",
      "--help",
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=120,
    env=dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")),
  )
  assert p.returncode == 0, p.stdout[-1000:] + p.stderr[-2000:]
  for flag in SCRIPTS[name]:
    assert flag in p.stdout, (name, flag)
  # the description is whole sentences, not a docstring's first line cut mid-sentence
  paragraphs = p.stdout.split("\n\n")
  description = paragraphs[1]  # after the usage line (argparse) or the entry-point line (absl)
  assert description.rstrip()[-1] in ".:)`", description
  # one flag style: a hyphenated long flag appears only as the alias after its underscore form
  for line in p.stdout.splitlines():
    first = re.match(r"\s*(--[a-z][\w-]*)", line)
    if first and not line.strip().startswith("--config."):
      assert "-" not in first.group(1)[2:], line


@pytest.mark.parametrize(
  "module,args,message",
  [
    (
      "cikg_jax.predict",
      ["--workdir=w", "--users=1", "--k=abc"],
      "argument --k: invalid int value",
    ),
    ("cikg_jax.predict", ["--users=1"], "the following arguments are required: --workdir"),
    ("cikg_jax.data.convert", ["--src=a", "--out=b", "--bogus"], "unrecognized arguments: --bogus"),
    ("cikg_jax.data.download", ["--out=x", "--dataset=nope"], "argument --dataset: invalid choice"),
    ("inference.structure", ["--kappa=x"], "argument --kappa: invalid int value"),
  ],
)
def test_bad_flags_are_one_line_errors(module, args, message, capsys):
  from importlib import import_module

  with pytest.raises(SystemExit) as e:
    import_module(module).main(args)
  err = capsys.readouterr().err
  assert e.value.code == 2 and err.startswith(f"error: {message}") and err.count("\n") == 1, err
  assert err.rstrip().endswith("(--help lists the flags)")


def test_the_error_line_stays_whole_and_last_while_another_thread_is_mid_line():
  """A library thread has left half a line in stderr's buffer (a traceback's indent) when the run
  fails: the error line is written whole, and nothing written after it reaches stderr."""
  script = (
    "import sys\n"
    "from cikg_jax import main\n"
    "main._watch_stderr()\n"
    "sys.stderr.write('before\\n    ')\n"
    "main._last_line_to_stderr('error: /w/checkpoints: the disk is full')\n"
    "sys.stderr.write('late traceback line\\n'); sys.stderr.flush()\n"
    "print('late', file=sys.__stderr__, flush=True)\n"
  )
  p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
  assert p.stderr.splitlines() == ["before", "    ", "error: /w/checkpoints: the disk is full"]


def test_a_library_threads_closed_event_loop_traceback_is_dropped_and_others_are_kept():
  script = (
    "import sys, threading, traceback\n"
    "from cikg_jax import main\n"
    "main._watch_stderr()\n"
    "def report(error):\n"
    "  try:\n"
    "    raise error\n"
    "  except Exception as e:\n"
    "    traceback.print_exception(e, file=sys.stderr)\n"
    "for error in (RuntimeError('Event loop is closed'), ValueError('a real failure')):\n"
    "  t = threading.Thread(target=report, args=(error,)); t.start(); t.join()\n"
    "sys.stderr.write('main thread line\\n')\n"
  )
  p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
  assert "Event loop is closed" not in p.stderr
  lines = p.stderr.splitlines()
  assert lines[0] == "Traceback (most recent call last):" and lines.count(lines[0]) == 1
  assert lines[-2:] == ["ValueError: a real failure", "main thread line"]

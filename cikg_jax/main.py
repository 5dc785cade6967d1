"""Entry point: python -m cikg_jax.main --config=configs/NAME.py --workdir=DIR [--config.x=v]

Without --config it runs the tiny synthetic job (configs/tiny.py). Errors a user can cause (bad
data, config or workdir, a busy workdir, a non-finite loss) end as one line `error: ...` on stderr
and exit status 1 (2 for bad flags); --debug shows the Python traceback instead."""

import logging as pylogging
import os
import sys
import threading

from cikg_jax import runtime

runtime.stop_with_parent()
if not runtime.nvidia_gpu_visible():
  runtime.set_xla_cpu_flags()  # before JAX creates its CPU client (cikg_jax/runtime.py)

from absl import app, flags, logging
from ml_collections import config_flags

from cikg_jax.parallel import distributed
from cikg_jax.training import checkpoint, config_rules, rundir, train
import configs

_DEFAULT_CONFIG = os.path.join(os.path.dirname(configs.__file__), "tiny.py")
# Errors that report a problem with the input, not a bug: their message is the whole story.
USER_ERRORS = (ValueError, OSError, FloatingPointError, rundir.RunError, checkpoint.CheckpointError)

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", "runs/tiny", "Directory for config, metrics, results, checkpoints.")
flags.DEFINE_bool("debug", False, "Show the Python traceback of an input error, not one line.")
try:
  # Applies the --config.x=v overrides at once: an unknown key fails here, at import.
  config_flags.DEFINE_config_file(
    "config", _DEFAULT_CONFIG, "Training configuration file.", lock_config=True
  )
  _CONFIG_FLAG_ERROR = None
except (AttributeError, KeyError, TypeError, ValueError, OSError) as e:
  _CONFIG_FLAG_ERROR = e


def _message(e: BaseException) -> str:
  """One line: the innermost wrapped exception's text (KeyError's without its quotes)."""
  while e.args and isinstance(e.args[0], BaseException):
    e = e.args[0]
  text = e.args[0] if e.args and isinstance(e.args[0], str) else str(e)
  return " ".join(text.split())


def _fail(text: str, status: int) -> None:
  print(f"error: {text}", file=sys.stderr, flush=True)
  _quiet_shutdown()
  sys.exit(status)


class _StderrTail:
  """sys.stderr for the training CLI. It remembers whether the last write ended a line (see
  _last_line_to_stderr), and it drops one known report: during a failed checkpoint save a
  TensorStore thread's callback reaches orbax's closed event loop and the traceback of that
  RuntimeError is printed by a path no hook reaches; the save's own one-line error says what
  failed. Other threads' tracebacks are held until their exception line, then written whole."""

  CLOSED_LOOP = "RuntimeError: Event loop is closed"

  def __init__(self, stream):
    self._stream = stream
    self._held: dict = {}  # thread id -> the traceback it is printing
    self.mid_line = False

  def write(self, text):
    if threading.current_thread() is not threading.main_thread():
      thread = threading.get_ident()
      held = self._held.pop(thread, None)
      if held is None and text.startswith("Traceback (most recent call last):"):
        held = ""
      if held is not None:
        held += text
        last = held.rstrip("\n").rsplit("\n", 1)[-1]
        if not held.endswith("\n") or not last or last.startswith((" ", "Traceback")):
          self._held[thread] = held  # not yet at the exception line
          return len(text)
        if last.strip() == self.CLOSED_LOOP:
          return len(text)
        text = held
    if text:
      self.mid_line = not text.endswith("\n")
    return self._stream.write(text)

  def __getattr__(self, name):
    return getattr(self._stream, name)


def _watch_stderr() -> None:
  if not isinstance(sys.stderr, _StderrTail):
    sys.stderr = _StderrTail(sys.stderr)


def _last_line_to_stderr(line: str) -> None:
  """Writes `line` as the last line on stderr. Other threads (orbax's save threads, TensorStore
  callbacks) may be printing the same failure at this moment: stderr (the descriptor and
  sys.stderr) is pointed at the null device first, so nothing reaches the terminal after `line`,
  and `line` starts on a line of its own when a traceback was left half written."""
  sys.stdout.flush()
  terminal = os.dup(2)
  null = os.open(os.devnull, os.O_WRONLY)
  os.dup2(null, 2)
  os.close(null)
  mid_line = getattr(sys.stderr, "mid_line", False)
  sys.stderr = open(os.devnull, "w")  # noqa: SIM115 -- open until the process ends
  os.write(terminal, (("\n" if mid_line else "") + line + "\n").encode())


def _quiet_shutdown() -> None:
  """After the one-line error, the libraries' own reports of the same failure at exit (orbax's
  save threads, TensorBoard's atexit flush on a full disk, TensorStore coroutines) are dropped:
  the error line stays the last line. --debug never gets here."""
  sys.unraisablehook = lambda unraisable: None
  sys.excepthook = lambda *exc_info: None
  threading.excepthook = lambda args: None
  for name in ("absl", "asyncio"):
    pylogging.getLogger(name).setLevel(pylogging.CRITICAL)


def _debug_requested() -> bool:
  return any(a in ("--debug", "--debug=true", "--debug=True") for a in sys.argv[1:])


def _config_flag_error(e: BaseException) -> str:
  if isinstance(e, (AttributeError, KeyError)):
    return f"--config override: unknown key {_message(e)}"
  return f"--config: {_message(e)}"


def _without_traceback(e: BaseException) -> str:
  """A flag error's text, a traceback embedded in it (config_flags quotes the config file's)
  reduced to its last line, the exception."""
  text = str(e)
  if "Traceback (most recent call last):" not in text:
    return _message(e)
  head = text.split("Traceback (most recent call last):")[0]
  last = [line for line in text.splitlines() if line.strip()][-1]
  return " ".join(f"{head.strip()} {last.strip()}".split())


def _parse_flags(argv):
  try:
    return FLAGS(argv)
  except flags.Error as e:
    _fail(f"{_without_traceback(e)} (--helpfull lists the flags)", 2)
  except (AttributeError, KeyError, TypeError, ValueError, OSError) as e:
    # --config=FILE loads the file and applies the overrides here, not at import
    if _debug_requested():
      raise
    _fail(_config_flag_error(e), 2)


def main(argv):
  del argv
  _watch_stderr()
  logging.set_verbosity(logging.WARNING)  # orbax logs every checkpoint step at INFO
  pylogging.getLogger("cikg_jax").setLevel(pylogging.INFO)  # this project's progress lines
  runtime.keep_freed_memory()  # no page faults on the CPU step's large buffers (cikg_jax/runtime.py)
  # one seed, one run on a GPU too (config.train.deterministic); before any device is touched
  runtime.set_xla_gpu_deterministic(bool(FLAGS.config.train.get("deterministic", True)))
  if runtime.xla_gpu_deterministic_requested() and FLAGS.config.model.get("backend") == "segment":
    logging.warning(
      "model.backend=segment in XLA:GPU's deterministic mode: its scatter-add is very slow "
      "(minutes per CIKGRec epoch on an H200); model.backend=auto or bcsr is deterministic and "
      "fast there, or set --config.train.deterministic=False"
    )
  try:
    config_rules.check(FLAGS.config)  # every value, before anything is allocated or written
  except config_rules.ConfigError as e:
    _fail(_message(e), 2)
  try:
    # One process of several (config.parallel, Slurm, Open MPI): joins the others before
    # anything touches a device. Process 0 alone logs progress.
    if distributed.initialize(FLAGS.config) and not distributed.is_primary():
      pylogging.getLogger("cikg_jax").setLevel(pylogging.ERROR)
    train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except USER_ERRORS as e:
    if FLAGS.debug:
      raise
    _last_line_to_stderr(f"error: {_message(e)}")
    _quiet_shutdown()
    if distributed.process_count() == 1:
      # Orbax's and TensorStore's threads may still report the same failure (a full disk)
      # through paths no hook reaches; what the run wrote is already durable (it survives
      # kill -9), so the process ends here and the error stays the last line.
      sys.stdout.flush()
      os._exit(1)
    sys.exit(1)


def help_text() -> str:
  """The flags, and every config key with its base value (documented in configs/base.py)."""
  from cikg_jax import cli_help
  from configs import base

  keys = "\n".join(f"  --{k}={v!r}" for k, v in cli_help.config_keys(base.get_config()))
  footer = (
    "config keys: any key of the config file, overridden with --config.KEY=VALUE; what each means "
    'is documented in configs/base.py (and README "Train"). The base values:\n' + keys
  )
  return cli_help.render(__doc__, FLAGS, ("config", "workdir", "debug"), footer)


def run():
  """The console entry point (`cikg-train`), as `python -m cikg_jax.main`."""
  from cikg_jax import cli_help

  if cli_help.wants_help(sys.argv):
    cli_help.print_help_and_exit(help_text())
  if _CONFIG_FLAG_ERROR is not None:
    if _debug_requested():
      raise _CONFIG_FLAG_ERROR
    _fail(_config_flag_error(_CONFIG_FLAG_ERROR), 2)
  app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
  run()

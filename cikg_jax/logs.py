"""One path for progress output: every module of cikg_jax, inference and experiments logs to a
child of the "cikg_jax" logger (stdlib logging), never with print; progress bars are tqdm's, shown
on terminals. What a command line prints is its result (a table, a JSON summary, a one-line
error).

The training and generation CLIs run under absl, whose handler on the root logger writes these
records to stderr; they only set the "cikg_jax" logger's level. A command line without absl (the
experiment scripts) calls `to_stderr`."""

from __future__ import annotations

import logging
import sys

NAME = "cikg_jax"


def to_stderr(level: int = logging.INFO) -> None:
  """The "cikg_jax" logger's records at `level` and above as plain lines on stderr, once, unless a
  handler (absl's, pytest's) already receives them through the root logger."""
  logger = logging.getLogger(NAME)
  logger.setLevel(level)
  if not logger.handlers and not logging.getLogger().handlers:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)

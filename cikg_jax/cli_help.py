"""Command-line conventions shared by the console scripts: `--help` for the absl entry points
(cikg-train, cikg-generate) with the module's description and its flags, exit status 0, as argparse
tools do (absl's own `--help` prints only a usage line and exits 1); and bad flags in one line.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from typing import Iterable, Iterator, Tuple

HELP_ARGS = ("-h", "--help", "--helpshort", "-?")


def wants_help(argv) -> bool:
  return any(a in HELP_ARGS for a in argv[1:])


def config_keys(config, prefix: str = "config") -> Iterator[Tuple[str, object]]:
  """(--config.a.b, default) of every leaf of a ConfigDict, in its order."""
  for k, v in config.items():
    if hasattr(v, "items"):
      yield from config_keys(v, f"{prefix}.{k}")
    else:
      yield f"{prefix}.{k}", v


def render(doc: str, flag_values, names: Iterable[str], footer: str = "") -> str:
  lines = [doc.strip(), "", "flags:"]
  for n in names:
    f = flag_values[n]
    default = "(required)" if f.default is None else f"(default: {f.default_as_str})"
    lines.append(f"  --{n}: {f.help} {default}")
  if footer:
    head, _, rest = footer.rstrip().partition("\n")
    lines += ["", textwrap.fill(head, 100)] + ([rest] if rest else [])
  return "\n".join(lines)


def print_help_and_exit(text: str) -> None:
  print(text)
  sys.exit(0)


class ArgumentParser(argparse.ArgumentParser):
  """argparse with a bad flag reported in one line, `error: ...`, exit status 2 (as the trainer's
  flags), instead of the usage text followed by the error."""

  def error(self, message: str):
    print(f"error: {message} (--help lists the flags)", file=sys.stderr)
    sys.exit(2)

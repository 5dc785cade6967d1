"""The backend interface every backend implements; it imports no backend (`factory` builds them)."""

from __future__ import annotations

import threading
from typing import Callable, Dict, List, Protocol

Emit = Callable[[Dict], None]


class Backend(Protocol):
  """Generates answers for Batch requests, reporting each as soon as it is known.

  `run` calls `emit(record)` from the calling thread once per request that finished, successfully
  (`ok=True`, with `text`, `finish_reason`, `usage`) or not (`ok=False`, with `error`). It returns
  early, leaving the rest unreported, once `stop` is set.
  """

  def describe(self) -> Dict: ...

  def run(self, requests: List[Dict], emit: Emit, stop: threading.Event) -> None: ...

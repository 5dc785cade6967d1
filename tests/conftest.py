import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

from cikg_jax import runtime  # noqa: E402  (imports no JAX)

# On a GPU the suite runs as the CLI does (config.train.deterministic): XLA's deterministic ops,
# requested before JAX starts; nothing changes on a CPU.
runtime.set_xla_gpu_deterministic(True)


@pytest.fixture(scope="session")
def data_dir():
  """The paper's datasets (CI: ../shared/data). Tests that need them skip loudly without them."""
  d = os.environ.get("CIKG_DATA_DIR") or os.path.join(ROOT, "..", "shared", "data")
  if not os.path.isdir(os.path.join(d, "dbbook2014")):
    pytest.skip(f"paper datasets not found in {d} (set CIKG_DATA_DIR)")
  return d

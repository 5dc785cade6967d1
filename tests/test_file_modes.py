"""Run files are created with the mode of any ordinary file (0666 less the umask), not mkstemp's
0600, so that colleagues on a shared filesystem can read a run where the umask allows it."""

import os

import pytest

from cikg_jax.training import rundir


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o077, 0o002])
def test_atomically_written_run_files_follow_the_umask(tmp_path, mask):
  old = os.umask(mask)
  try:
    assert rundir.umask() == mask
    rundir.write_json(str(tmp_path / "results.json"), {"a": 1})
    rundir.write_atomic(str(tmp_path / "results.json"), "{}\n")  # replacing keeps the rule
  finally:
    os.umask(old)
  assert os.stat(tmp_path / "results.json").st_mode & 0o777 == 0o666 & ~mask

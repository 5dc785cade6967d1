import functools
import http.server
import os
import shutil
import threading

import pytest

from cikg_jax.data import download


@pytest.fixture()
def server(tmp_path, data_dir):
  """A local HTTP server on 127.0.0.1 serving a copy of the datasets laid out like the repo."""
  root = tmp_path / "www"
  shutil.copytree(os.path.join(data_dir, "book-crossing"), root / "data" / "book-crossing")
  handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
  handler.log_message = lambda *a: None
  httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
  threading.Thread(target=httpd.serve_forever, daemon=True).start()
  yield f"http://127.0.0.1:{httpd.server_address[1]}/data", root
  httpd.shutdown()


def test_fetch_verifies_and_is_idempotent(server, tmp_path):
  url, _ = server
  out = tmp_path / "out"
  got = download.fetch("book-crossing", str(out), base_url=url)
  assert len(got) == len(download.files_of("book-crossing")) == 8
  assert download.fetch("book-crossing", str(out), base_url=url) == []  # all present and valid


def test_corrupted_file_is_rejected_and_not_written(server, tmp_path):
  url, root = server
  with open(root / "data" / "book-crossing" / "train.txt", "a") as f:
    f.write("9999 1\n")
  out = tmp_path / "out"
  with pytest.raises(download.DownloadError, match="train.txt: sha256"):
    download.fetch("book-crossing", str(out), base_url=url)
  assert not (out / "book-crossing" / "train.txt").exists()


def test_offline_fails_clearly(tmp_path):
  with pytest.raises(download.DownloadError, match="could not fetch .*offline"):
    download.fetch("dbbook2014", str(tmp_path), base_url="http://127.0.0.1:9/data", timeout=2)
  assert (
    download.main(
      ["--dataset", "ml1m", "--out", str(tmp_path), "--base-url", "http://127.0.0.1:9/data"]
    )
    == 1
  )


def test_git_blob_check_for_ml1m_kg():
  with pytest.raises(download.DownloadError, match="git blob id"):
    download._verify("ml1m/kg_final.txt", b"not the file")


@pytest.mark.parametrize("mask", [0o027, 0o002])
def test_fetched_files_get_the_umask_mode_not_mkstemps_0600(server, tmp_path, mask):
  url, _ = server
  old = os.umask(mask)
  try:
    got = download.fetch("book-crossing", str(tmp_path / "out"), base_url=url)
  finally:
    os.umask(old)
  assert {os.stat(p).st_mode & 0o777 for p in got} == {0o666 & ~mask}

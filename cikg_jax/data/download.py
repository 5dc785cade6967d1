"""Fetches a dataset from the authors' public repository at the pinned commit, verifying every file
against the checksums shipped with this package (cikg_jax/data/SHA256SUMS; ml1m's kg_final.txt,
absent from that list, against its git blob id).

  python -m cikg_jax.data.download --dataset dbbook2014 --out data/
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
from typing import Dict, List
import urllib.error
import urllib.request

from cikg_jax import cli_help
from cikg_jax.training import rundir

COMMIT = "4cd310f605e8857883a508170e6753dcb05c4e98"
BASE_URL = f"https://raw.githubusercontent.com/laowangzi/CIKGRec/{COMMIT}/data"
DATASETS = ("dbbook2014", "book-crossing", "ml1m")
# ml1m/kg_final.txt is not in SHA256SUMS; the repository pins it by git blob id (DATA.md).
GIT_BLOBS = {"ml1m/kg_final.txt": "a156befb7ff917d8a27a7d2331b5982fa2ff18b4"}


class DownloadError(RuntimeError):
  pass


def checksums() -> Dict[str, str]:
  path = os.path.join(os.path.dirname(__file__), "SHA256SUMS")
  out = {}
  with open(path) as f:
    for line in f:
      if line.strip():
        digest, name = line.split()
        out[name] = digest
  return out


def files_of(dataset: str) -> List[str]:
  names = sorted(n.split("/", 1)[1] for n in checksums() if n.startswith(dataset + "/"))
  names += sorted(n.split("/", 1)[1] for n in GIT_BLOBS if n.startswith(dataset + "/"))
  return names


def _verify(rel: str, data: bytes) -> None:
  sums = checksums()
  if rel in sums:
    got = hashlib.sha256(data).hexdigest()
    if got != sums[rel]:
      raise DownloadError(f"{rel}: sha256 {got} does not match the pinned {sums[rel]}")
  elif rel in GIT_BLOBS:
    got = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
    if got != GIT_BLOBS[rel]:
      raise DownloadError(f"{rel}: git blob id {got} does not match the pinned {GIT_BLOBS[rel]}")
  else:
    raise DownloadError(f"{rel}: no pinned checksum")


def fetch(
  dataset: str,
  out_dir: str,
  base_url: str = BASE_URL,
  timeout: float = 60.0,
  skip_missing: bool = False,
) -> List[str]:
  """Downloads each file of `dataset` into out_dir/dataset, verified, atomically (a file only
  appears once its checksum matched). Files already present and valid are kept."""
  if dataset not in DATASETS:
    raise DownloadError(f"unknown dataset {dataset!r}; choose from {DATASETS}")
  target = os.path.join(out_dir, dataset)
  os.makedirs(target, exist_ok=True)
  written = []
  for name in files_of(dataset):
    rel = f"{dataset}/{name}"
    dest = os.path.join(target, name)
    if os.path.exists(dest):
      try:
        with open(dest, "rb") as f:
          _verify(rel, f.read())
        continue
      except DownloadError:
        pass  # corrupt or stale: fetch again
    url = f"{base_url.rstrip('/')}/{rel}"
    try:
      with urllib.request.urlopen(url, timeout=timeout) as resp:
        data = resp.read()
    except (urllib.error.URLError, OSError) as e:
      if skip_missing and isinstance(e, urllib.error.HTTPError) and e.code == 404:
        continue
      raise DownloadError(
        f"could not fetch {url}: {e}. Are you offline? The datasets can also "
        "be copied by hand into the data directory."
      ) from e
    _verify(rel, data)
    fd, tmp = tempfile.mkstemp(dir=target, prefix=f".{name}.")
    rundir.ordinary_mode(fd)  # mkstemp's 0600 would hide the data from the group
    with os.fdopen(fd, "wb") as f:
      f.write(data)
    os.replace(tmp, dest)
    written.append(dest)
  return written


def main(argv=None) -> int:
  parser = cli_help.ArgumentParser(
    description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument("--dataset", choices=DATASETS + ("all",), required=True)
  parser.add_argument("--out", required=True, help="data directory (datasets go in subfolders)")
  parser.add_argument(
    "--base_url",
    "--base-url",
    default=BASE_URL,
    help="where the files are (default: the pinned commit)",
  )
  args = parser.parse_args(argv)
  names = DATASETS if args.dataset == "all" else (args.dataset,)
  try:
    for name in names:
      got = fetch(name, args.out, args.base_url)
      print(f"{name}: {len(got)} files fetched and verified into {os.path.join(args.out, name)}")
  except DownloadError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())

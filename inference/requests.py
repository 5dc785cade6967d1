"""OpenAI-Batch JSONL in and out.

A request line is `{"custom_id", "method": "POST", "url": "/v1/chat/completions", "body": {...}}`,
the format that OpenAI's Batch API and `vllm run-batch` both take unchanged. custom_id is
`user-<uid>` (the Batch API requires a string).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Mapping, Sequence

from cikg_jax.training import rundir
from inference.history import last_titles
from inference.prompts import PromptTemplate

CHAT_URL = "/v1/chat/completions"


def custom_id(uid: int) -> str:
  return f"user-{uid}"


def uid_of(cid: str) -> int:
  """Inverse of `custom_id`; a clear error for anything else."""
  if not cid.startswith("user-") or not cid[5:].isdigit():
    raise ValueError(f"custom_id {cid!r} is not of the form user-<uid>")
  return int(cid[5:])


def request_sha256(request: Mapping) -> str:
  """Hash of what is sent for a request (url + body: model, sampling, messages); stored with its
  answer so that a resumed run can tell an answer to this exact request from one to another dataset
  or prompt."""
  blob = json.dumps(
    {"url": request.get("url"), "body": request["body"]}, sort_keys=True, ensure_ascii=False
  )
  return hashlib.sha256(blob.encode()).hexdigest()


def jsonl_bytes(rows: Iterable[Mapping]) -> bytes:
  """The exact bytes `write_jsonl` writes for `rows`."""
  return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode()


def build_requests(
  history: Mapping[int, Sequence[int]],
  titles: Mapping[int, str],
  template: PromptTemplate,
  domain: str,
  body: Mapping,
  n_items: int = 30,
) -> List[Dict]:
  """One Batch request per user with at least one titled item among their last `n_items`.

  `history` must hold TRAINING items only (validation/test already removed); `body` holds the model
  name and sampling parameters copied into every request.
  """
  if "messages" in body:
    raise ValueError("body must not contain 'messages'; they come from the template")
  out = []
  for uid in sorted(history):
    t = last_titles(history[uid], titles, n_items)
    if not t:
      continue
    out.append(
      {
        "custom_id": custom_id(uid),
        "method": "POST",
        "url": CHAT_URL,
        "body": {**body, "messages": template.messages(t, domain)},
      }
    )
  return out


def write_jsonl(path: str | Path, rows: Iterable[Mapping]) -> int:
  """Write rows atomically and durably (rundir.write_atomic); returns the count."""
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  lines = [json.dumps(row, ensure_ascii=False) + "\n" for row in rows]
  rundir.write_atomic(str(path), "".join(lines))
  return len(lines)


def read_jsonl(path: str | Path) -> Iterator[Dict]:
  """Yield JSON objects, naming file and line on a malformed one."""
  with open(path, encoding="utf-8") as f:
    for line_no, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        row = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{line_no}: not valid JSON ({e.msg})") from None
      if not isinstance(row, dict):
        raise ValueError(f"{path}:{line_no}: expected a JSON object")
      yield row


def read_requests(path: str | Path) -> List[Dict]:
  """Read and validate a Batch request file (unique custom_ids, chat URL, messages present)."""
  seen, out = set(), []
  for n, row in enumerate(read_jsonl(path), 1):
    missing = {"custom_id", "method", "url", "body"} - row.keys()
    if missing:
      raise ValueError(f"{path}: request {n}: missing {sorted(missing)}")
    if row["url"] != CHAT_URL or "messages" not in row["body"]:
      raise ValueError(f"{path}: request {n}: only {CHAT_URL} chat requests are supported")
    if row["custom_id"] in seen:
      raise ValueError(f"{path}: request {n}: duplicate custom_id {row['custom_id']!r}")
    seen.add(row["custom_id"])
    out.append(row)
  return out


def batch_output_to_records(path: str | Path) -> List[Dict]:
  """Convert an OpenAI/`vllm run-batch` output file into this package's result records."""
  out = []
  for row in read_jsonl(path):
    resp, err = row.get("response") or {}, row.get("error")
    body = resp.get("body") or {}
    if err or resp.get("status_code", 200) != 200 or not body.get("choices"):
      out.append({"custom_id": row["custom_id"], "ok": False, "error": str(err or body)[:500]})
      continue
    choice = body["choices"][0]
    out.append(
      {
        "custom_id": row["custom_id"],
        "ok": True,
        "text": choice["message"].get("content") or "",
        "finish_reason": choice.get("finish_reason"),
        "usage": body.get("usage"),
        "model": body.get("model"),
      }
    )
  return out

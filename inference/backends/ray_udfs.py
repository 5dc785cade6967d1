"""The row functions Ray Data's LLM processors run on the cluster's workers (pre-/post-processing).

They import nothing but the standard library, and `ray_data.py` registers this module for pickling
by value, so workers need neither this project installed nor its dependencies: only Ray (and vLLM
for the engine processor). Each output row is `{"custom_id", "record"}` with `record` the JSON of a
results.jsonl / failures.jsonl record (a JSON string keeps the Arrow schema the same for every row).
"""

from __future__ import annotations

import json

# Request-body keys that map 1:1 onto vllm.SamplingParams (as inference.backends.vllm_offline).
SAMPLING_KEYS = (
  "temperature",
  "top_p",
  "top_k",
  "min_p",
  "max_tokens",
  "seed",
  "repetition_penalty",
  "presence_penalty",
  "frequency_penalty",
  "stop",
  "n",
)


def http_preprocess(row):
  """Row {custom_id, body (JSON)} -> the HTTP processor's `payload` (the request body as is)."""
  return {"custom_id": row["custom_id"], "payload": json.loads(row["body"])}


def _fail(cid, reason, detail, attempts=1):
  return {
    "custom_id": cid,
    "record": json.dumps(
      {
        "custom_id": cid,
        "ok": False,
        "error": reason,
        "errors": [f"{reason}: {detail}"[:200]],
        "attempts": attempts,
      }
    ),
  }


def http_postprocess(row):
  """An OpenAI chat-completion response (or an error body) -> one record."""
  cid = row["custom_id"]
  resp = row.get("http_response")
  if isinstance(resp, str):
    try:
      resp = json.loads(resp)
    except ValueError:
      return _fail(cid, "bad_response", resp[:120])
  if not isinstance(resp, dict):
    return _fail(cid, "bad_response", f"response is {type(resp).__name__}")
  if resp.get("error") is not None:
    err = resp["error"]
    msg = err.get("message") if isinstance(err, dict) else err
    return _fail(cid, "http_error", str(msg))
  choices = resp.get("choices")
  if not choices:
    return _fail(cid, "bad_response", "no choices in the response")
  msg = (choices[0] or {}).get("message") or {}
  content = msg.get("content")
  if not isinstance(content, str):
    return _fail(cid, "bad_response", f"message.content is {type(content).__name__}, not text")
  usage = resp.get("usage")
  rec = {
    "custom_id": cid,
    "ok": True,
    "text": content,
    "finish_reason": choices[0].get("finish_reason"),
    "usage": dict(usage) if isinstance(usage, dict) else None,
    "model": resp.get("model"),
    "attempts": 1,
  }
  return {"custom_id": cid, "record": json.dumps(rec)}


def vllm_preprocess(row):
  """Dataset row -> the vLLM engine processor's `messages` and `sampling_params` (structured outputs
  as vLLM's `structured_outputs` dict); `max_tokens` is kept to tell a cut answer ('length')."""
  body = json.loads(row["body"])
  sp = {k: body[k] for k in SAMPLING_KEYS if body.get(k) is not None}
  if "max_completion_tokens" in body and "max_tokens" not in sp:
    sp["max_tokens"] = body["max_completion_tokens"]
  if body.get("structured_outputs"):
    sp["structured_outputs"] = body["structured_outputs"]
  return {
    "custom_id": row["custom_id"],
    "messages": body["messages"],
    "sampling_params": sp,
    "max_tokens": int(sp.get("max_tokens") or 0),
    "served_name": body.get("model") or "",
  }
  # (not a `model` column: Ray's vLLM stage reads one as the name of a LoRA adapter to load)


def vllm_postprocess(row):
  """vLLM engine output -> one record. Ray's processor reports no finish reason: an answer that used
  all `max_tokens` is recorded as 'length' (what vLLM would say), otherwise 'stop'."""
  cid = row["custom_id"]
  err = row.get("__inference_error__")
  if err:
    return _fail(cid, "engine_error", str(err))
  n_out = int(row.get("num_generated_tokens") or 0)
  max_tokens = int(row.get("max_tokens") or 0)
  text = row.get("generated_text")
  if not isinstance(text, str):
    return _fail(cid, "bad_response", f"generated_text is {type(text).__name__}")
  rec = {
    "custom_id": cid,
    "ok": True,
    "text": text,
    "finish_reason": "length" if max_tokens and n_out >= max_tokens else "stop",
    "usage": {"prompt_tokens": int(row.get("num_input_tokens") or 0), "completion_tokens": n_out},
    "model": row.get("served_name") or None,
    "attempts": 1,
  }
  return {"custom_id": cid, "record": json.dumps(rec)}

"""Client for any OpenAI-compatible chat endpoint (vLLM server, llama.cpp server, OpenAI, ...).

Why our own retry loop on top of the `openai` client: every attempt and its reason must be recorded,
a run must stop early when an endpoint is dead (instead of backing off on thousands of requests),
and requests fan out over several endpoints (one vLLM server per GPU or host) from one shared queue,
so a faster endpoint simply takes more work.
"""

from __future__ import annotations

from dataclasses import dataclass
import queue
import random
import threading
import time
from typing import Dict, List, Optional, Sequence, Tuple

import openai

from inference.backends.base import Emit
from inference.backends.credentials import DEFAULT_API_KEY_ENV, endpoint_specs, resolve_api_key
from inference.redact import redact

# Chat-completion fields the openai client takes as keyword arguments; the rest go through
# extra_body.
_STANDARD = {
  "model",
  "messages",
  "temperature",
  "top_p",
  "max_tokens",
  "max_completion_tokens",
  "seed",
  "n",
  "stop",
  "frequency_penalty",
  "presence_penalty",
  "response_format",
  "logprobs",
  "top_logprobs",
  "logit_bias",
  "user",
}


@dataclass
class Endpoint:
  """One server. Its API key is NOT a field: `api_key_env` names the environment variable read when
  the client is built (None: no key); `key_required` makes an unset variable an error instead of
  "EMPTY"."""

  base_url: str
  concurrency: int = 8
  api_key_env: Optional[str] = DEFAULT_API_KEY_ENV
  key_required: bool = False


def endpoints_from_config(endpoints) -> List[Endpoint]:
  """`config.endpoints` -> Endpoints; refuses a literal api_key (inference.backends.credentials)."""
  return [Endpoint(**spec) for spec in endpoint_specs(endpoints)]


@dataclass
class RetryPolicy:
  max_attempts: int = 4
  backoff_base_s: float = 0.5
  backoff_max_s: float = 20.0
  timeout_s: float = 120.0

  def delay(self, attempt: int, rng: random.Random) -> float:
    """Exponential backoff with full jitter after failed attempt number `attempt` (1-based)."""
    return rng.uniform(0, min(self.backoff_max_s, self.backoff_base_s * 2 ** (attempt - 1)))


class RateLimiter:
  """At most `rps` request starts per second over all threads (0 = unlimited)."""

  def __init__(self, rps: float):
    self.interval = 1.0 / rps if rps and rps > 0 else 0.0
    self._next = time.monotonic()
    self._lock = threading.Lock()

  def wait(self) -> None:
    if not self.interval:
      return
    with self._lock:
      now = time.monotonic()
      start = max(now, self._next)
      self._next = start + self.interval
    if start > now:
      time.sleep(start - now)


class BadResponse(Exception):
  """The server answered 200 but not with a usable chat completion."""


def split_body(body: Dict) -> Tuple[Dict, Dict]:
  """A body -> the client's keyword arguments and `extra_body` (top_k, structured_outputs, ...)."""
  std = {k: v for k, v in body.items() if k in _STANDARD}
  extra = {k: v for k, v in body.items() if k not in _STANDARD}
  return std, extra


def classify(exc: BaseException) -> Tuple[str, bool]:
  """(reason, retryable) for an exception raised by one attempt."""
  if isinstance(exc, openai.APITimeoutError):
    return "timeout", True
  if isinstance(exc, openai.APIConnectionError):
    return "connection", True
  if isinstance(exc, openai.RateLimitError):
    return "rate_limited", True
  if isinstance(exc, openai.APIStatusError):
    code = exc.status_code
    return f"http_{code}", code >= 500 or code in (408, 409)
  if isinstance(
    exc, (BadResponse, openai.APIResponseValidationError, ValueError, KeyError, TypeError)
  ):
    return "bad_response", True
  return type(exc).__name__, False


def _completion_record(resp) -> Dict:
  choices = getattr(resp, "choices", None)
  if not choices:
    raise BadResponse("no choices in the response")
  msg = choices[0].message
  content = getattr(msg, "content", None)
  if not isinstance(content, str):
    raise BadResponse(f"message.content is {type(content).__name__}, not text")
  usage = resp.usage.model_dump() if getattr(resp, "usage", None) is not None else None
  return {
    "text": content,
    "finish_reason": choices[0].finish_reason,
    "usage": usage,
    "model": getattr(resp, "model", None),
  }


class OpenAIBackend:
  def __init__(
    self,
    endpoints: Sequence[Endpoint],
    retry: RetryPolicy = RetryPolicy(),
    rate_limit_rps: float = 0.0,
    seed: int = 0,
  ):
    if not endpoints:
      raise ValueError("at least one endpoint is needed")
    self.endpoints = list(endpoints)
    self.retry = retry
    self.limiter = RateLimiter(rate_limit_rps)
    self.seed = seed
    # max_retries=0: our loop retries, so attempts are counted and reasons kept.
    # The key is read from the environment here and lives only inside the client object.
    self.clients = [
      openai.OpenAI(
        base_url=e.base_url,
        api_key=resolve_api_key(e.api_key_env, e.key_required),
        timeout=retry.timeout_s,
        max_retries=0,
      )
      for e in self.endpoints
    ]

  @classmethod
  def from_config(cls, config, endpoints: Optional[Sequence[Endpoint]] = None) -> "OpenAIBackend":
    c = config.client
    eps = endpoints or endpoints_from_config(config.endpoints)
    return cls(
      eps,
      RetryPolicy(c.max_attempts, c.backoff_base_s, c.backoff_max_s, c.timeout_s),
      c.rate_limit_rps,
      config.seed,
    )

  def describe(self) -> Dict:
    return {
      "backend": "openai",
      "endpoints": [
        {"base_url": redact(e.base_url), "concurrency": e.concurrency, "api_key_env": e.api_key_env}
        for e in self.endpoints
      ],
      "retry": vars(self.retry),
      "rate_limit_rps": 1 / self.limiter.interval if self.limiter.interval else 0,
    }

  def call_once(self, idx: int, body: Dict) -> Dict:
    std, extra = split_body(body)
    resp = self.clients[idx].chat.completions.create(**std, extra_body=extra or None)
    return _completion_record(resp)

  def _attempts(self, idx: int, req: Dict, stop: threading.Event, rng: random.Random) -> Dict:
    """All attempts for one request on endpoint `idx`; returns its record."""
    errors: List[str] = []
    t0 = time.monotonic()
    for attempt in range(1, self.retry.max_attempts + 1):
      self.limiter.wait()
      try:
        rec = self.call_once(idx, req["body"])
        return {
          "custom_id": req["custom_id"],
          "ok": True,
          **rec,
          "attempts": attempt,
          "latency_s": round(time.monotonic() - t0, 3),
          "endpoint": redact(self.endpoints[idx].base_url),
        }
      except Exception as exc:  # noqa: BLE001 - every failure is classified and recorded
        reason, retryable = classify(exc)
        errors.append(
          redact(f"{reason}: {exc}")[:200]
        )  # redacted before a cut could split a secret
        if not retryable or attempt == self.retry.max_attempts or stop.is_set():
          return {
            "custom_id": req["custom_id"],
            "ok": False,
            "error": reason,
            "errors": errors,
            "attempts": attempt,
            "endpoint": redact(self.endpoints[idx].base_url),
          }
        stop.wait(self.retry.delay(attempt, rng))
    raise AssertionError("unreachable")

  def run(self, requests: List[Dict], emit: Emit, stop: threading.Event) -> None:
    todo: "queue.Queue[Dict]" = queue.Queue()
    for r in requests:
      todo.put(r)
    done: "queue.Queue[Dict]" = queue.Queue()

    def worker(idx: int, wseed: int) -> None:
      rng = random.Random(wseed)
      while not stop.is_set():
        try:
          req = todo.get_nowait()
        except queue.Empty:
          return
        done.put(self._attempts(idx, req, stop, rng))

    threads = []
    for i, e in enumerate(self.endpoints):
      for _ in range(max(1, e.concurrency)):
        threads.append(
          threading.Thread(target=worker, args=(i, self.seed * 1000 + len(threads)), daemon=True)
        )
    for t in threads:
      t.start()
    finished = False
    try:
      while any(t.is_alive() for t in threads) or not done.empty():
        try:
          emit(done.get(timeout=0.1))
        except queue.Empty:
          continue
      finished = True
    finally:
      stop.set()
      # On an interrupt, wait only briefly: in-flight requests are simply redone by the next run.
      deadline = time.monotonic() + (self.retry.timeout_s + 5 if finished else 2.0)
      for t in threads:
        t.join(timeout=max(0.0, deadline - time.monotonic()))
      while not done.empty():  # answers that arrived while stopping are still kept
        emit(done.get_nowait())

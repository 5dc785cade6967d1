"""A stand-in OpenAI-compatible chat server on 127.0.0.1 for fault tests: it can delay, fail, answer
garbage, truncate, or die mid-run; it can require an API key (401 otherwise) and quote the Authorization
header it received in its error bodies (a leaky server, for the redaction tests). Answers are deterministic functions of the request, so a test can
check that every stored answer belongs to its own request.

  python tests/inference_fixtures/fake_openai_server.py --port 0 --port_file F [--delay_s 0.1] [--die_after 10]
(in-process: `start_server(Behaviour(...))`).
"""

from __future__ import annotations

import argparse
import collections
from dataclasses import dataclass
import hashlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
import json
import os
import threading
import time


@dataclass
class Behaviour:
  model: str = "fake-model"
  delay_s: float = 0.0
  fail_first: int = 0  # answer 500 to the first N attempts of each distinct request
  garbage_first: int = 0  # answer 200 with non-JSON to the first N attempts of each request
  no_choices_first: int = 0  # answer 200 JSON without choices to the first N attempts
  status: int = 200  # a fixed error status for every request (e.g. 400)
  finish_reason: str = "stop"
  die_after: int = 0  # os._exit after this many good answers (subprocess mode only)
  require_key: str = (
    ""  # answer 401 unless the request carries `Authorization: Bearer <require_key>`
  )
  echo_auth: bool = False  # error bodies quote the Authorization header received (a leaky server)
  echo_key: bool = False  # error bodies quote the bare key received, without "Bearer"


def answer_for(messages) -> str:
  """The deterministic answer: 'interest <key>, topic <key>' where key identifies the request."""
  key = hashlib.sha1(json.dumps(messages, sort_keys=True).encode()).hexdigest()[:8]
  return f"The user's interests are: interest {key}, topic {key}"


class State:
  def __init__(self, b: Behaviour):
    self.b = b
    self.lock = threading.Lock()
    self.attempts = collections.Counter()
    self.in_flight = 0
    self.max_in_flight = 0
    self.answered = 0
    self.requests = 0
    self.auth_ok = 0  # requests that carried the required key


def make_handler(state: State):
  class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):  # quiet
      pass

    def _send(self, code: int, payload: bytes, ctype: str = "application/json"):
      self.send_response(code)
      self.send_header("Content-Type", ctype)
      self.send_header("Content-Length", str(len(payload)))
      self.end_headers()
      self.wfile.write(payload)

    def do_GET(self):
      if self.path == "/health":
        return self._send(200, b"")
      if self.path == "/v1/models":
        return self._send(
          200, json.dumps({"object": "list", "data": [{"id": state.b.model}]}).encode()
        )
      if self.path == "/stats":
        with state.lock:
          s = {
            "max_in_flight": state.max_in_flight,
            "answered": state.answered,
            "requests": state.requests,
            "auth_ok": state.auth_ok,
          }
        return self._send(200, json.dumps(s).encode())
      self._send(404, b"{}")

    def do_POST(self):
      body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
      b = state.b
      key = json.dumps(body.get("messages"), sort_keys=True)
      with state.lock:
        state.requests += 1
        state.attempts[key] += 1
        n = state.attempts[key]
        state.in_flight += 1
        state.max_in_flight = max(state.max_in_flight, state.in_flight)
      auth = self.headers.get("Authorization", "")
      echoed = (
        f" (got Authorization: {auth})"
        if b.echo_auth
        else f": credential rejected: {auth.split()[-1]}"
        if b.echo_key and auth
        else ""
      )
      err = lambda msg: json.dumps({"error": {"message": msg + echoed}}).encode()
      try:
        if b.delay_s:
          time.sleep(b.delay_s)
        if b.require_key:
          if auth != f"Bearer {b.require_key}":
            return self._send(401, err("invalid api key"))
          with state.lock:
            state.auth_ok += 1
        if body.get("model") != b.model:
          return self._send(
            404, json.dumps({"error": {"message": f"model {body.get('model')} not found"}}).encode()
          )
        if b.status != 200:
          return self._send(b.status, err("forced"))
        if n <= b.fail_first:
          return self._send(500, err("boom"))
        if n <= b.fail_first + b.garbage_first:
          return self._send(200, b"<html>not json", "application/json")
        if n <= b.fail_first + b.garbage_first + b.no_choices_first:
          return self._send(
            200,
            json.dumps(
              {
                "id": "x",
                "object": "chat.completion",
                "created": 0,
                "model": b.model,
                "choices": [],
              }
            ).encode(),
          )
        text = answer_for(body["messages"])
        resp = {
          "id": "cmpl-1",
          "object": "chat.completion",
          "created": int(time.time()),
          "model": b.model,
          "choices": [
            {
              "index": 0,
              "message": {"role": "assistant", "content": text},
              "finish_reason": b.finish_reason,
            }
          ],
          "usage": {"prompt_tokens": 10, "completion_tokens": 8, "total_tokens": 18},
        }
        self._send(200, json.dumps(resp).encode())
        with state.lock:
          state.answered += 1
          if b.die_after and state.answered >= b.die_after:
            self.wfile.flush()
            os._exit(17)
      finally:
        with state.lock:
          state.in_flight -= 1

  return H


def start_server(b: Behaviour, port: int = 0):
  """Serve in a daemon thread; returns (server, state, base_url). Stop with server.shutdown()."""
  state = State(b)
  srv = ThreadingHTTPServer(("127.0.0.1", port), make_handler(state))
  srv.daemon_threads = True
  threading.Thread(target=srv.serve_forever, daemon=True).start()
  return srv, state, f"http://127.0.0.1:{srv.server_address[1]}/v1"


if __name__ == "__main__":
  ap = argparse.ArgumentParser()
  ap.add_argument("--port", type=int, default=0)
  ap.add_argument("--port_file", default="")
  for f in ("delay_s",):
    ap.add_argument(f"--{f}", type=float, default=0.0)
  for f in ("fail_first", "garbage_first", "die_after"):
    ap.add_argument(f"--{f}", type=int, default=0)
  ap.add_argument("--status", type=int, default=200)
  ap.add_argument("--model", default="fake-model")
  ap.add_argument(
    "--require_key_env", default="", help="require the key held in this environment variable"
  )
  ap.add_argument("--echo_auth", action="store_true")
  a = ap.parse_args()
  srv, _, url = start_server(
    Behaviour(
      model=a.model,
      delay_s=a.delay_s,
      fail_first=a.fail_first,
      garbage_first=a.garbage_first,
      die_after=a.die_after,
      status=a.status,
      require_key=os.environ.get(a.require_key_env, "") if a.require_key_env else "",
      echo_auth=a.echo_auth,
    ),
    a.port,
  )
  if a.port_file:
    tmp = a.port_file + ".tmp"
    with open(tmp, "w") as f:
      f.write(str(srv.server_address[1]))
    os.replace(tmp, a.port_file)
  try:
    threading.Event().wait()
  except KeyboardInterrupt:
    srv.shutdown()

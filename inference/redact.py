"""The one redaction function: all this package writes to disk or prints passes through `redact`.

Credentials are never configured as values (endpoints name an environment variable, `api_key_env`),
but a token can still reach a config dump (`server.env.HF_TOKEN`, `server.extra_args`), an error
message (a server echoing a header, a URL with `user:pass@`), or the server's own log. `redact`
masks, recursively over mappings, lists and strings:
  - the value of any key named like a credential: a word key/token/secret/password/passwd/pwd/
    authorization/auth/credential(s)/cookie/passphrase/apikey (`api_key`, `HF_TOKEN`, `X-Api-Key`,
    `accessToken`); plural counters such as `max_tokens` / `completion_tokens` are not credentials,
    and keys ending in `_env` / `_var` hold the NAME of a variable, which is kept;
  - command-line flags named like that and their value (`--api-key X`, `--hf-token=X`), `NAME=value`
    pairs and `"name": "value"` pairs inside text;
  - `Bearer ...` / `Basic ...` credentials, token-shaped strings (`sk-...`, `hf_...`, `ghp_...`,
    `xox?-...`, `AKIA...`), and the user-info of URLs (`https://user:pass@host` ->
    `https://***@host`) and credential query parameters (`?api_key=...`);
  - the exact values of the credentials this process read (`remember`: every key resolved from an
    `api_key_env` variable) and of the credential variables its libraries read (CREDENTIAL_ENV),
    wherever they appear: a server that echoes the key in an error body, a key in a base_url path.
"""

from __future__ import annotations

import os
import re
import threading
from typing import Any

MASK = "***"
# Shorter values are not masked verbatim (they would mask ordinary words); the patterns still apply.
MIN_SECRET_LENGTH = 6
_READ: set = set()  # credential values this process read (`remember`)
_READ_LOCK = threading.Lock()
# Credential variables read by the clients and servers this package starts (openai, huggingface_hub,
# vLLM), whether or not an endpoint names them.
CREDENTIAL_ENV = ("OPENAI_API_KEY", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "VLLM_API_KEY")

_WORDS = {
  "key",
  "apikey",
  "token",
  "secret",
  "secrets",
  "password",
  "passwd",
  "pwd",
  "authorization",
  "auth",
  "credential",
  "credentials",
  "cookie",
  "passphrase",
  "bearer",
}
_SUFFIXES = ("apikey", "token", "secret", "password", "passwd")
_NAME_OF_VARIABLE = {
  "env",
  "var",
}  # api_key_env = "OPENAI_API_KEY": the variable's name, not its value


def _words(name: str):
  name = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name)  # camelCase -> camel_Case
  return [w for w in re.split(r"[^A-Za-z0-9]+", name.lower()) if w]


def is_secret_name(name: str) -> bool:
  """True for a key or flag named like a credential (see the module docstring)."""
  words = _words(str(name))
  if not words or words[-1] in _NAME_OF_VARIABLE:
    return False
  return any(w in _WORDS or w.endswith(_SUFFIXES) for w in words)


# Token-shaped values, whatever they are called.
_TOKEN_RE = re.compile(
  r"\b(?:sk-[A-Za-z0-9_\-]{6,}|hf_[A-Za-z0-9]{10,}|gh[pousr]_[A-Za-z0-9]{10,}"
  r"|github_pat_[A-Za-z0-9_]{10,}|xox[abposr]-[A-Za-z0-9\-]{6,}|AKIA[0-9A-Z]{16})"
)
_AUTH_SCHEME_RE = re.compile(
  r"\b([Bb]earer|BEARER)(\s+)[A-Za-z0-9._~+/=\-]+|\b(Basic)(\s+)[A-Za-z0-9+/=]{8,}"
)
# A credential header whose value is not a Bearer/Basic pair (`X-Api-Key: abc`, `Authorization:
# abc`).
_HEADER_RE = re.compile(
  r"\b(?P<name>(?:proxy-)?authorization|x-api-key|api-key|cookie)(?P<sep>\s*:\s*)"
  r"(?!(?:[Bb]earer|BEARER|Basic)\s)(?P<val>[^\s'\",}]+)",
  re.IGNORECASE,
)
_URL_USERINFO_RE = re.compile(r"\b([A-Za-z][A-Za-z0-9+.\-]*://)[^/\s@'\"<>]+@")
# name=value in a query string, an environment assignment or a log line (`api_key=...`,
# `HF_TOKEN=...`).
_ASSIGN_RE = re.compile(
  r"(?P<name>[A-Za-z_][A-Za-z0-9_.\-]*)=(?P<vq>['\"]?)(?P<val>[^\s&,;'\"}\])]+)"
)
# "name": "value" / 'name': 'value' (JSON or a Python repr inside an error message).
_QUOTED_RE = re.compile(
  r"(?P<q>['\"])(?P<name>[^'\"]{1,80})(?P=q)(?P<sep>\s*:\s*)(?P<vq>['\"])"
  r"(?P<val>.*?)(?<!\\)(?P=vq)"
)
# --flag value / -flag value on a command line.
_FLAG_RE = re.compile(
  r"(?P<flag>(?<![\w-])--?[A-Za-z][A-Za-z0-9_\-]*)(?P<sep>\s+)(?P<val>[^\s\-'\"][^\s'\"]*)"
)


def remember(value: str) -> None:
  """Masks `value` verbatim in everything redacted from now on (a credential this process read)."""
  if isinstance(value, str) and len(value) >= MIN_SECRET_LENGTH:
    with _READ_LOCK:
      _READ.add(value)


def _known_values():
  """The remembered credentials and the values of CREDENTIAL_ENV, longest first (so a key that
  contains another is masked whole)."""
  with _READ_LOCK:
    values = set(_READ)
  values.update(os.environ.get(k, "") for k in CREDENTIAL_ENV)
  return sorted((v for v in values if len(v) >= MIN_SECRET_LENGTH), key=len, reverse=True)


def _redact_str(s: str) -> str:
  if not s:
    return s
  for value in _known_values():
    if value in s:
      s = s.replace(value, MASK)
  s = _URL_USERINFO_RE.sub(lambda m: m.group(1) + MASK + "@", s)
  s = _AUTH_SCHEME_RE.sub(
    lambda m: (m.group(1) or m.group(3)) + (m.group(2) or m.group(4)) + MASK, s
  )
  s = _HEADER_RE.sub(lambda m: m.group("name") + m.group("sep") + MASK, s)
  s = _QUOTED_RE.sub(
    lambda m: (
      (
        m.group("q")
        + m.group("name")
        + m.group("q")
        + m.group("sep")
        + m.group("vq")
        + MASK
        + m.group("vq")
      )
      if is_secret_name(m.group("name"))
      else m.group(0)
    ),
    s,
  )
  s = _ASSIGN_RE.sub(
    lambda m: (
      m.group("name") + "=" + m.group("vq") + MASK
      if is_secret_name(m.group("name"))
      else m.group(0)
    ),
    s,
  )
  s = _FLAG_RE.sub(
    lambda m: (
      m.group("flag") + m.group("sep") + MASK if is_secret_name(m.group("flag")) else m.group(0)
    ),
    s,
  )
  s = _TOKEN_RE.sub(MASK, s)
  return s


def _redact_argv(items):
  """A list of strings: also mask the element after a credential flag (`["--api-key", "X"]`)."""
  out, mask_next = [], False
  for x in items:
    if mask_next and isinstance(x, str):
      out.append(MASK)
      mask_next = False
      continue
    mask_next = isinstance(x, str) and x.startswith("-") and "=" not in x and is_secret_name(x)
    out.append(redact(x))
  return out


def _mask_value(v: Any) -> Any:
  if v is None or v == "" or isinstance(v, bool):
    return v
  return MASK


def redact(obj: Any) -> Any:
  """A copy of `obj` (mapping / list / tuple / str / ConfigDict / scalar), credentials masked."""
  if hasattr(obj, "to_dict") and callable(obj.to_dict):  # ml_collections.ConfigDict
    obj = obj.to_dict()
  if isinstance(obj, dict) or (hasattr(obj, "items") and hasattr(obj, "keys")):
    return {k: (_mask_value(v) if is_secret_name(str(k)) else redact(v)) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return _redact_argv(obj)
  if isinstance(obj, str):
    return _redact_str(obj)
  if isinstance(obj, bytes):
    return _redact_str(obj.decode("utf-8", errors="replace")).encode()
  return obj

"""Credentials are named, never given: an endpoint names the environment variable holding its key.

  --config.endpoints='({"base_url": "https://api.example.com/v1", "api_key_env": "MY_KEY"},)'

`api_key_env` defaults to OPENAI_API_KEY; when the default variable is unset the key sent is the
literal "EMPTY" (local vLLM / llama.cpp servers take any key). A variable named explicitly must be
set. The key is read from the environment when the client is built and is never stored in a config,
manifest or log; a literal `api_key` (or any credential-named field) in an endpoint is refused.
"""

from __future__ import annotations

import os
from typing import Dict, List, Mapping, Optional

from inference.redact import is_secret_name, remember

DEFAULT_API_KEY_ENV = "OPENAI_API_KEY"
NO_KEY = "EMPTY"
_ENDPOINT_FIELDS = {"base_url", "concurrency", "api_key_env"}


class CredentialError(ValueError):
  """A credential written into a config, or a named key variable that is not set."""


def endpoint_specs(endpoints) -> List[Dict]:
  """Validated endpoints: [{base_url, concurrency, api_key_env, key_required}]; no literal keys."""
  out = []
  for i, e in enumerate(endpoints or ()):
    if not isinstance(e, Mapping) and hasattr(e, "to_dict"):
      e = e.to_dict()
    if not isinstance(e, Mapping) or "base_url" not in e:
      raise ValueError(f"config.endpoints[{i}] must be a dict with a 'base_url'")
    secret = sorted(k for k in e if is_secret_name(str(k)))
    if secret:
      raise CredentialError(
        f"config.endpoints[{i}] has {', '.join(repr(k) for k in secret)}: credentials are not "
        f"accepted in configs (they would be written to manifest.json and logs); export the key in "
        f"an environment variable and name it with 'api_key_env' (default {DEFAULT_API_KEY_ENV}: "
        f"`export {DEFAULT_API_KEY_ENV}=...`; unset means no key, for local servers)"
      )
    unknown = sorted(set(e) - _ENDPOINT_FIELDS)
    if unknown:
      raise ValueError(
        f"config.endpoints[{i}]: unknown field(s) {unknown}; known: {sorted(_ENDPOINT_FIELDS)}"
      )
    env = e.get("api_key_env")
    out.append(
      {
        "base_url": str(e["base_url"]),
        "concurrency": int(e.get("concurrency", 8)),
        "api_key_env": env or DEFAULT_API_KEY_ENV,
        "key_required": bool(env),
      }
    )
  return out


def resolve_api_key(api_key_env: Optional[str], required: bool = False) -> str:
  """The key in `api_key_env` ("EMPTY" when unset, unless the variable was named explicitly)."""
  if not api_key_env:
    return NO_KEY
  key = os.environ.get(api_key_env)
  if key:
    remember(key)  # masked verbatim in everything written or printed, whatever a server echoes
    return key
  if required:
    raise CredentialError(
      f"api_key_env names {api_key_env}, which is not set in the environment "
      f"(`export {api_key_env}=...`)"
    )
  return NO_KEY

"""`make_backend`: the backend a config names, imported only when it is asked for (vLLM, Ray and
the OpenAI client are heavy or optional). The backends import only `base`, never this module."""

from __future__ import annotations

import contextlib
from typing import Iterator

from inference.backends.base import Backend


@contextlib.contextmanager
def make_backend(config) -> Iterator[Backend]:
  """The backend `config.backend` names: 'openai' | 'vllm_server' | 'vllm_offline' | 'ray_data'.

  'vllm_server' launches the server for the run's duration and stops it afterwards, whatever
  happens; so does 'ray_data' with `config.ray.processor='http'` and no `config.endpoints`.
  """
  kind = config.backend
  if kind == "openai":
    from inference.backends.openai_client import OpenAIBackend

    yield OpenAIBackend.from_config(config)
  elif kind == "vllm_server":
    from inference.backends.openai_client import OpenAIBackend
    from inference.backends.vllm_server import VLLMServer

    with VLLMServer.from_config(config) as server:
      yield OpenAIBackend.from_config(
        config, endpoints=[server.endpoint(config.server.concurrency)]
      )
  elif kind == "vllm_offline":
    from inference.backends.vllm_offline import VLLMOfflineBackend

    yield VLLMOfflineBackend.from_config(config)
  elif kind == "ray_data":
    from inference.backends.ray_data import RayDataBackend

    if config.ray.processor == "http" and not config.endpoints:
      from inference.backends.vllm_server import VLLMServer

      with VLLMServer.from_config(config) as server:
        with RayDataBackend.from_config(config, endpoints=[server.endpoint()]) as backend:
          yield backend
    else:
      with RayDataBackend.from_config(config) as backend:
        yield backend
  else:
    raise ValueError(
      f"config.backend must be 'openai', 'vllm_server', 'vllm_offline' or 'ray_data', got {kind!r}"
    )

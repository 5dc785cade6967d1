"""Default production model: Qwen2.5-7B-Instruct through vLLM on one GPU (offline engine).

Why this model: Apache-2.0 (no gated licence), strong instruction following for its size (keeps to
"five comma-separated interests"), broad world knowledge of book and film titles in many languages,
fits one 24 GB GPU in bf16 with room for KV cache, first-class vLLM support.
Switch to the server path with --config.backend=vllm_server, or to several running servers with
--config.backend=openai --config.endpoints=... (see inference/README.md).
"""

from configs.llm import _base as llm_base


def get_config():
  c = llm_base.base_config()
  c.name = "qwen2_5_7b"
  c.model.name = "Qwen/Qwen2.5-7B-Instruct"
  c.model.revision = "main"  # pin to the commit you downloaded; the manifest records what was used
  c.model.served_name = "qwen2.5-7b-instruct"
  # Qwen's recommended sampling, written out in full; a fixed per-request seed makes it repeatable.
  c.sampling.temperature = 0.7
  c.sampling.top_p = 0.8
  c.sampling.top_k = 20
  c.sampling.repetition_penalty = 1.05
  c.sampling.max_tokens = 128
  c.engine.dtype = "bfloat16"
  c.engine.max_model_len = 4096
  c.engine.gpu_memory_utilization = 0.90
  c.backend = "vllm_offline"
  return c

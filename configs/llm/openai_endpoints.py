"""Any running OpenAI-compatible endpoints (e.g. one `vllm serve` per GPU or host), requests fanned out.

Example: --config.endpoints='({"base_url": "http://gpu0:8000/v1", "concurrency": 64},
                              {"base_url": "http://gpu1:8000/v1", "concurrency": 64})'
The served model name must match --config.model.served_name (vLLM answers 404 otherwise).
"""
from configs.llm import _base as llm_base


def get_config():
    c = llm_base.base_config()
    c.name = "openai_endpoints"
    c.model.name = "Qwen/Qwen2.5-7B-Instruct"
    c.model.revision = "main"
    c.model.served_name = "qwen2.5-7b-instruct"
    c.sampling.temperature = 0.7
    c.sampling.top_p = 0.8
    c.sampling.top_k = 20
    c.sampling.repetition_penalty = 1.05
    c.sampling.max_tokens = 128
    c.backend = "openai"
    c.endpoints = ({"base_url": "http://127.0.0.1:8000/v1", "api_key": "EMPTY", "concurrency": 32},)
    return c

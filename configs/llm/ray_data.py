"""Production model (Qwen2.5-7B-Instruct, as qwen2_5_7b.py) on a Ray cluster through Ray Data's vLLM
engine processor: one vLLM engine per GPU (`ray.concurrency` replicas, each `engine.tensor_parallel_size`
GPUs), `ray.batch_size` users per batch. Join a running cluster (`ray start --head` / `--address`, KubeRay,
Slurm) with --config.ray.address=auto; '' starts a local one on this machine.

  python -m inference.generate --config=configs/llm/ray_data.py --config.ray.address=auto --config.ray.concurrency=8
  # running OpenAI-compatible servers instead of engines in Ray actors:
  python -m inference.generate --config=configs/llm/ray_data.py --config.ray.processor=http \
      --config.endpoints='({"base_url": "http://gpu0:8000/v1"}, {"base_url": "http://gpu1:8000/v1"})'
The sampling, prompt and model are those of qwen2_5_7b.py, so the answers (and the run-directory
fingerprint) are the same as with the other backends.
"""

from configs.llm import qwen2_5_7b


def get_config():
  c = qwen2_5_7b.get_config()
  c.name = "ray_data"
  c.backend = "ray_data"
  c.ray.processor = "vllm_engine"
  c.ray.address = "auto"  # a running cluster; '' = start a local one
  c.ray.concurrency = 1  # replicas: the number of GPUs / tensor_parallel_size
  c.ray.batch_size = 64
  c.ray.cpu_stage_num_cpus = 1.0
  return c

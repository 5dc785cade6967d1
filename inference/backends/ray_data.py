"""Ray Data's LLM processors as a backend: the requests become a `ray.data` dataset and go through
`ray.data.llm.build_processor` with either

- `vLLMEngineProcessorConfig` (processor='vllm_engine'): vLLM engines as Ray actors, `concurrency`
  replicas (one per GPU, or per tensor-parallel group), `batch_size` rows per batch; or
- `HttpRequestProcessorConfig` (processor='http'): POSTs the request bodies unchanged to running
  OpenAI-compatible endpoints' /chat/completions (one processor per endpoint, requests dealt
  round-robin).

Output rows stream back to this process (`iter_rows`) and are emitted one by one to the runner,
which stores them exactly as for the other backends (results.jsonl / failures.jsonl, request hashes,
lock, fingerprint, redaction). A block whose task fails for good (after Ray's own retries) is
dropped (`DataContext.max_errored_blocks`), and its users are recorded as failures
('missing_from_output') to be redone by a rerun. Ray is imported here only.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
import time
from typing import Dict, List, Optional, Sequence

from inference.backends.base import Emit
from inference.backends.credentials import resolve_api_key
from inference.redact import redact


class RayDataBackend:
  def __init__(
    self,
    processor: str,
    *,
    concurrency=1,
    batch_size: int = 16,
    ray_init: Optional[Dict] = None,
    env: Optional[Dict[str, str]] = None,
    cpu_stage_num_cpus: Optional[float] = 0.25,
    max_errored_blocks: int = -1,
    model_source: str = "",
    engine_kwargs: Optional[Dict] = None,
    replica_resources: Optional[Dict] = None,
    endpoints: Sequence = (),
    max_attempts: int = 4,
    backoff_base_s: float = 0.5,
    timeout_s: float = 120.0,
    qps: float = 0.0,
    show_progress: bool = False,
  ):
    if processor not in ("vllm_engine", "http"):
      raise ValueError(f"config.ray.processor must be 'vllm_engine' or 'http', got {processor!r}")
    if processor == "http" and not endpoints:
      raise ValueError("the ray_data HTTP processor needs config.endpoints (or a launched server)")
    self.processor = processor
    self.concurrency = (
      tuple(concurrency) if isinstance(concurrency, (list, tuple)) else int(concurrency)
    )
    self.batch_size = int(batch_size)
    self.ray_init = dict(ray_init or {})
    self.env = {k: str(v) for k, v in (env or {}).items()}
    self.cpu_stage_num_cpus = cpu_stage_num_cpus
    self.max_errored_blocks = int(max_errored_blocks)
    self.model_source = model_source
    self.engine_kwargs = dict(engine_kwargs or {})
    self.replica_resources = dict(replica_resources or {})
    self.endpoints = list(endpoints)
    self.max_attempts, self.backoff_base_s, self.timeout_s = (
      int(max_attempts),
      backoff_base_s,
      timeout_s,
    )
    self.qps = qps
    self.show_progress = show_progress
    self._started_ray = False
    self.cluster: Dict = {}
    self._stats: Dict = {}

  @classmethod
  def from_config(cls, config, endpoints: Optional[Sequence] = None) -> "RayDataBackend":
    from inference.backends.openai_client import endpoints_from_config

    r, m, e, c = config.ray, config.model, config.engine, config.client
    init = {"address": r.address or None}
    if not r.address:  # a local cluster started by this process
      init.update(num_cpus=r.num_cpus or None, include_dashboard=False)
      if r.local_ip:
        init["_node_ip_address"] = r.local_ip
    engine = {
      "dtype": e.dtype,
      "max_model_len": e.max_model_len,
      "seed": config.seed,
      "enforce_eager": e.enforce_eager,
      "generation_config": "vllm",
      "tensor_parallel_size": e.tensor_parallel_size,
      "served_model_name": m.served_name or None,
      "revision": m.revision or None,
    }
    if e.device != "cpu":
      engine["gpu_memory_utilization"] = e.gpu_memory_utilization
    engine.update(dict(e.extra_engine_kwargs))
    # One replica's resources: by default one GPU per tensor-parallel rank (Ray's own default);
    # on CPU, `cpus_per_replica` CPUs (the engine must not wait for a GPU that does not exist).
    replica = {"CPU": r.cpus_per_replica} if e.device == "cpu" else {}
    env = dict(config.server.env) if r.inherit_server_env else {}
    env.update(dict(r.env))
    eps = (
      list(endpoints)
      if endpoints
      else (endpoints_from_config(config.endpoints) if r.processor == "http" else [])
    )
    return cls(
      r.processor,
      concurrency=r.concurrency,
      batch_size=r.batch_size,
      ray_init=init,
      env=env,
      cpu_stage_num_cpus=r.cpu_stage_num_cpus or None,
      max_errored_blocks=r.max_errored_blocks,
      model_source=m.path or m.name,
      engine_kwargs={k: v for k, v in engine.items() if v is not None},
      replica_resources=replica,
      endpoints=eps,
      max_attempts=c.max_attempts,
      backoff_base_s=c.backoff_base_s,
      timeout_s=c.timeout_s,
      qps=c.rate_limit_rps,
      show_progress=r.show_progress,
    )

  # -- cluster -------------------------------------------------------------------------------------
  def start(self) -> "RayDataBackend":
    import ray

    from inference.backends import ray_udfs

    if not ray.is_initialized():
      kw = {k: v for k, v in self.ray_init.items() if v is not None}
      if self.env:
        kw["runtime_env"] = {"env_vars": self.env}
      ray.init(**kw, ignore_reinit_error=True, logging_level=logging.WARNING, log_to_driver=False)
      self._started_ray = True
    # Workers need no copy of this project: the row functions travel by value.
    ray.cloudpickle.register_pickle_by_value(ray_udfs)
    ctx = ray.data.DataContext.get_current()
    ctx.max_errored_blocks = self.max_errored_blocks
    ctx.enable_progress_bars = self.show_progress
    ctx.print_on_execution_start = self.show_progress
    alive = [n for n in ray.nodes() if n.get("Alive")]
    res = ray.cluster_resources()
    self.cluster = {
      "nodes": len(alive),
      "CPU": res.get("CPU", 0),
      "GPU": res.get("GPU", 0),
      "address": redact(self.ray_init.get("address") or "local"),
    }
    return self

  def close(self) -> None:
    if self._started_ray:
      import ray

      ray.shutdown()
      self._started_ray = False

  def __enter__(self) -> "RayDataBackend":
    return self.start()

  def __exit__(self, *exc) -> None:
    self.close()

  def describe(self) -> Dict:
    import ray

    d = {
      "backend": "ray_data",
      "processor": self.processor,
      "ray_version": ray.__version__,
      "cluster": self.cluster,
      "concurrency": self.concurrency,
      "batch_size": self.batch_size,
      "max_errored_blocks": self.max_errored_blocks,
      "cpu_stage_num_cpus": self.cpu_stage_num_cpus,
      "runtime_env_vars": sorted(self.env),
    }
    if self.processor == "vllm_engine":
      d.update(
        model_source=self.model_source,
        engine=self.engine_kwargs,
        replica_resources=self.replica_resources
        or {"GPU": self.engine_kwargs.get("tensor_parallel_size", 1)},
      )
    else:
      d.update(
        endpoints=[
          {"base_url": redact(ep.base_url), "api_key_env": ep.api_key_env} for ep in self.endpoints
        ],
        retry={
          "max_attempts": self.max_attempts,
          "backoff_base_s": self.backoff_base_s,
          "timeout_s": self.timeout_s,
        },
        qps=self.qps or None,
      )
    return d

  # -- processors ----------------------------------------------------------------------------------
  def _stage(self) -> Dict:
    return {"num_cpus": self.cpu_stage_num_cpus} if self.cpu_stage_num_cpus else {}

  def _map_kwargs(self) -> Optional[Dict]:
    return {"num_cpus": self.cpu_stage_num_cpus} if self.cpu_stage_num_cpus else None

  def _vllm_processor(self):
    from ray.data.llm import build_processor, vLLMEngineProcessorConfig

    from inference.backends import ray_udfs

    kw = {}
    if self.replica_resources:
      kw["placement_group_config"] = {
        "bundles": [dict(self.replica_resources)]
        * max(1, int(self.engine_kwargs.get("tensor_parallel_size", 1)))
      }
    if self.env:
      kw["runtime_env"] = {"env_vars": self.env}
    st = self._stage()
    # log_engine_metrics=False: vLLM's Ray metrics need `ray[serve]` (ImportError
    # "RayPrometheusMetric requires Ray to be installed" otherwise) and a metrics export port; the
    # runner keeps its own. should_continue_on_error=True: a request the engine rejects becomes a
    # failure record, not a crash.
    cfg = vLLMEngineProcessorConfig(
      model_source=self.model_source,
      engine_kwargs=dict(self.engine_kwargs),
      concurrency=self.concurrency,
      batch_size=self.batch_size,
      should_continue_on_error=True,
      log_engine_metrics=False,
      chat_template_stage=st or True,
      tokenize_stage=st or True,
      detokenize_stage=st or True,
      **kw,
    )
    return build_processor(
      cfg,
      preprocess=ray_udfs.vllm_preprocess,
      postprocess=ray_udfs.vllm_postprocess,
      preprocess_map_kwargs=self._map_kwargs(),
      postprocess_map_kwargs=self._map_kwargs(),
    )

  def _http_processor(self, ep):
    import aiohttp
    from ray.data.llm import HttpRequestProcessorConfig, build_processor

    from inference.backends import ray_udfs

    key = resolve_api_key(
      ep.api_key_env, ep.key_required
    )  # read here, lives in Ray's task args only
    session = functools.partial(
      aiohttp.ClientSession, timeout=aiohttp.ClientTimeout(total=self.timeout_s)
    )
    cfg = HttpRequestProcessorConfig(
      url=ep.base_url.rstrip("/") + "/chat/completions",
      headers={"Authorization": f"Bearer {key}"},
      concurrency=self.concurrency,
      batch_size=self.batch_size,
      qps=int(self.qps) if self.qps else None,
      max_retries=max(0, self.max_attempts - 1),
      base_retry_wait_time_in_s=self.backoff_base_s,
      session_factory=session,
      http_request_stage=self._stage() or True,
    )
    return build_processor(
      cfg,
      preprocess=ray_udfs.http_preprocess,
      postprocess=ray_udfs.http_postprocess,
      preprocess_map_kwargs=self._map_kwargs(),
      postprocess_map_kwargs=self._map_kwargs(),
    )

  def dataset(self, requests: List[Dict]):
    """The processed (lazy) dataset for these requests: rows {custom_id, record}."""
    import ray

    rows = [
      {"custom_id": r["custom_id"], "body": json.dumps(r["body"], sort_keys=True)} for r in requests
    ]

    def items(part):
      # One block per batch: a Ray task returns its output block only when the whole block is done,
      # so from_items' default (everything in one block) would hold every answer until the end.
      return ray.data.from_items(part, override_num_blocks=max(1, -(-len(part) // self.batch_size)))

    if self.processor == "vllm_engine":
      return self._vllm_processor()(items(rows))
    n = len(self.endpoints)
    parts = [
      self._http_processor(ep)(items(rows[i::n]))
      for i, ep in enumerate(self.endpoints)
      if rows[i::n]
    ]
    return parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]

  def run_stats(self) -> Dict:
    """Seconds to the first output row (actor start-up, e.g. a vLLM engine, plus the first batch),
    the rows of that first burst, and the rows/s after it (the steady rate, when answers kept coming
    for more than a second); the runner stores them in the manifest's run entry."""
    s = {k: v for k, v in self._stats.items() if k != "times"}
    times = self._stats.get("times") or []
    if times:
      burst = sum(1 for t in times if t - times[0] <= 0.5)
      s["first_burst_rows"] = burst
      if times[-1] - times[0] > 1.0:
        s["rows_per_s_after_first_burst"] = round((len(times) - burst) / (times[-1] - times[0]), 3)
    return s

  def run(self, requests: List[Dict], emit: Emit, stop: threading.Event) -> None:
    """Stream the processed rows back and emit each as a record; the requests are those the runner
    found unanswered (the dataset is filtered before generation)."""
    if not requests:
      return
    todo = {r["custom_id"] for r in requests}
    seen = set()
    t0 = time.monotonic()
    self._stats = {"rows": 0, "first_row_s": None, "last_row_s": None, "times": []}
    for row in self.dataset(requests).iter_rows():
      cid = row.get("custom_id")
      if cid not in todo or cid in seen:
        continue
      seen.add(cid)
      now = round(time.monotonic() - t0, 3)
      self._stats["rows"] += 1
      self._stats["last_row_s"] = now
      self._stats["times"].append(now)
      if self._stats["first_row_s"] is None:
        self._stats["first_row_s"] = now
      if row.get("record"):
        rec = json.loads(row["record"])
      else:  # an error row passes Ray's postprocess by
        err = row.get("__inference_error__") or "row without a record"
        rec = {
          "custom_id": cid,
          "ok": False,
          "error": "engine_error",
          "errors": [redact(f"engine_error: {err}")[:200]],
          "attempts": 1,
        }
      if not rec.get("ok"):
        rec["errors"] = [redact(x)[:200] for x in rec.get("errors", [])]
      emit(rec)
      if stop.is_set():
        return
    for cid in [r["custom_id"] for r in requests if r["custom_id"] not in seen]:
      emit(
        {
          "custom_id": cid,
          "ok": False,
          "error": "missing_from_output",
          "attempts": 1,
          "errors": [
            "missing_from_output: the Ray task of its block failed after Ray's retries "
            "(the block was dropped, DataContext.max_errored_blocks); see the Ray logs"
          ],
        }
      )
      if stop.is_set():
        return

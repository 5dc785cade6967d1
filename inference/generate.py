"""Generate user interests for a dataset with the LLM of a config; resumable.

  python -m inference.generate --config=configs/llm/smollm2_cpu.py --config.limit=40
  python -m inference.generate --config=configs/llm/qwen2_5_7b.py --config.dataset=ml1m
  python -m inference.generate --config=... --requests_only  # write the Batch file, send nothing
  python -m inference.generate --config=... --import_batch_output=out.jsonl  # `vllm run-batch`

Writes <out_dir>/requests.jsonl (OpenAI-Batch format), results.jsonl, failures.jsonl, manifest.json.
Rerun the same command to finish an interrupted run. The run lock is taken before anything is
written in out_dir, and a directory holding answers to other requests (another dataset, prompt,
model, sampling, split) is refused before any of it is touched. Credentials are never config values:
an endpoint names the environment variable holding its key (`api_key_env`, default OPENAI_API_KEY).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
import re
import sys
import traceback
from typing import Dict, List
import warnings

from cikg_jax.data import dataset as dataset_lib
from cikg_jax.data import files
from inference.backends.credentials import CredentialError
from inference.history import domain_of, exclude_items, read_item_titles, read_user_items
from inference.prompts import INTERESTS_JSON_SCHEMA, get_template
from inference.redact import redact
from inference.requests import batch_output_to_records, build_requests, jsonl_bytes, write_jsonl
from inference.runner import RunDir, RunDirError

log = logging.getLogger("cikg_jax.inference.generate")


def request_body(config) -> Dict:
  """Model name and the full sampling parameters, as sent in every request."""
  body = {"model": config.model.served_name or config.model.name, **config.sampling.to_dict()}
  if config.structured_outputs:
    body["structured_outputs"] = {"json": INTERESTS_JSON_SCHEMA}
  return body


def follow_model_name(config, overridden) -> None:
  """`--config.model.name=ORG/NAME` alone swaps the LLM: the served name, local path and output
  folder that the config file set for its own model follow the new name, unless also given on the
  command line (`overridden`: the dotted keys given there)."""
  if "model.name" not in overridden:
    return
  if "model.served_name" not in overridden:
    config.model.served_name = ""  # requests and the started server use model.name
  if "model.path" not in overridden:
    config.model.path = ""
  if "name" not in overridden and "out_dir" not in overridden:
    config.name = re.sub(r"[^A-Za-z0-9._-]+", "_", config.model.name).strip("_") or "model"


# What a missing module means here, in one line.
INSTALL_HINTS = {
  "vllm": "vLLM is not installed in this Python: `pip install -e '.[vllm]'` on an NVIDIA GPU "
  "machine, or on CPU `bash inference/setup_vllm_cpu.sh` and --config=configs/llm/smollm2_cpu.py "
  "(or --config.backend=openai with a running server)",
  "ray": "Ray is not installed in this Python: `pip install -e '.[ray]'` (the ray_data backend)",
}


class ModelNotServed(RuntimeError):
  """Requests were answered 404: the server serves no model of that name; a rerun cannot help."""


def not_found_404(config, summary) -> str:
  """The one-line error for requests answered 404: the server serves no model of that name."""
  model = request_body(config)["model"]
  return (
    f"the server answered 404 for model {model!r} ({summary['failure_reasons']['http_404']} "
    "requests): it serves no model of that name; set --config.model.served_name to a name its "
    "/v1/models lists (or --config.model.name to the model it serves)"
  )


def out_dir_of(config) -> Path:
  return Path(config.out_dir or f"runs/llm/{config.name}/{config.dataset}")


def dataset_root(config) -> Path:
  return Path(dataset_lib.resolve_data_dir(config.data_dir)) / config.dataset


def prompt_history(config):
  """(history, held_out): each user's model-fitting items in file order, and the items held out
  from the prompts. The dataset is loaded by the trainer's loader, so a file the trainer refuses is
  refused here with the same one-line error. By default the held-out items are the trainer's
  validation split, made by the trainer's own function with the same fraction and seed; test items
  are never in train.txt."""
  root = dataset_root(config)
  for f in ("train.txt", "item_list.txt"):
    if not (root / f).is_file():
      raise FileNotFoundError(f"{root / f}: missing (set --config.data_dir / --config.dataset)")
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # notes on the KG / interest files concern training only
    ds = dataset_lib.load_dataset(str(root.parent), root.name, selection="test")
  train: Dict[int, List[int]] = {}
  for u, i in ds.train.tolist():  # grouped by user, file order within a user
    train.setdefault(u, []).append(i)
  if config.valid_file:
    held = read_user_items(config.valid_file, n_items=ds.n_items)
  else:
    _, held = dataset_lib.model_fitting_split(
      train, config.split.selection, config.split.valid_fraction, config.split.split_seed
    )
  return exclude_items(train, held), held


def split_info(config, held) -> Dict:
  """What the manifest records of the split: its origin and a digest of the held-out items."""
  pairs = sorted((u, i) for u, items in held.items() for i in items)
  return {
    "valid_file": config.valid_file,
    **config.split.to_dict(),
    "held_out_items": len(pairs),
    "held_out_sha256": hashlib.sha256(json.dumps(pairs).encode()).hexdigest()[:16],
  }


def validation_items_in_prompts(history, held_out, titles, n_items: int) -> Dict[str, int]:
  """Leak count: held-out items among the titled items each prompt window shows."""
  users = items = 0
  for uid, hist in history.items():
    shown = {i for i in list(hist)[-n_items:] if i in titles}
    leaked = shown & set(held_out.get(uid, ()))
    users += bool(leaked)
    items += len(leaked)
  return {"users": users, "items": items}


def make_requests(config, history=None) -> List[Dict]:
  """Requests for all users (or the first `limit`) of config.dataset from model-fitting
  histories."""
  root = dataset_root(config)
  if history is None:
    history, _ = prompt_history(config)
  titles = read_item_titles(root / "item_list.txt", config.prompt.strip_disambiguation)
  template = get_template(config.prompt.template)
  reqs = build_requests(
    history,
    titles,
    template,
    config.prompt.domain or domain_of(config.dataset),
    request_body(config),
    config.prompt.n_items,
  )
  return reqs[: config.limit] if config.limit else reqs


def run_info(config, requests: List[Dict], held_out=None) -> Dict:
  """What the manifest records; its runner.FINGERPRINT_KEYS decide whether a run dir may resume."""
  t = get_template(config.prompt.template)
  if held_out is None:
    held_out = prompt_history(config)[1]
  return {
    "model": config.model.name,
    "revision": config.model.revision,
    "model_path": config.model.path,
    "served_name": config.model.served_name,
    "prompt_template": t.name,
    "prompt_template_hash": t.digest(),
    "prompt": config.prompt.to_dict(),
    "prompt_domain": config.prompt.domain or domain_of(config.dataset),
    "sampling": config.sampling.to_dict(),
    "structured_outputs": bool(config.structured_outputs),
    "seed": config.seed,
    "dataset": config.dataset,
    "n_items": config.prompt.n_items,
    "valid_file": config.valid_file,
    "split": split_info(config, held_out),
    "limit": config.limit,
    "requests_sha256": hashlib.sha256(jsonl_bytes(requests)).hexdigest()[:16],
    "config": json.loads(config.to_json_best_effort()),
  }


def check_credentials(config) -> None:
  """Refuse credentials written into the config (they would reach manifests and logs): endpoints
  name an environment variable instead (`api_key_env`)."""
  from inference.backends.credentials import endpoint_specs

  endpoint_specs(config.endpoints)


def generate(
  config, *, requests_only: bool = False, import_batch_output: str = "", progress: bool = True
) -> int:
  """The command, callable in-process; returns the exit status (0 done, 3 requests left);
  ModelNotServed if the server answered 404 for the model.

  Order matters: credentials checked, requests built (reads the dataset only), THEN the run lock
  taken, the run directory checked against these requests, and only then anything written in
  out_dir."""
  check_credentials(config)
  out = out_dir_of(config)
  history, held_out = prompt_history(config)
  reqs = make_requests(config, history)
  info = run_info(config, reqs, held_out)
  req_path = out / "requests.jsonl"
  with RunDir(out) as rd:
    todo = rd.check(reqs, info)
    write_jsonl(req_path, reqs)
    log.info("%d requests -> %s", len(reqs), req_path)
    if requests_only:
      return 0
    if import_batch_output:
      n = rd.import_records(batch_output_to_records(import_batch_output), reqs, info)
      log.info(
        "imported %d answers into %s (%s)", n["imported"], out / "results.jsonl", json.dumps(n)
      )
      return 0
    if not todo:
      log.info("all %d requests already answered in %s", len(reqs), out / "results.jsonl")
      return 0
    from inference.backends import make_backend

    if not config.server.log_path:
      config.server.log_path = str(out / "vllm_server.log")
    with make_backend(config) as backend:
      summary = rd.run(
        reqs,
        backend,
        info,
        max_consecutive_failures=config.client.max_consecutive_failures,
        progress=progress,
      )
  log.info("this run: %s", json.dumps(redact(summary), indent=1))
  if summary["remaining"] and summary["failure_reasons"].get("http_404"):
    raise ModelNotServed(not_found_404(config, summary))
  if summary["remaining"]:
    log.warning("%d requests not done; rerun the same command to finish", summary["remaining"])
    return 3
  return 0


def main(argv) -> None:
  from absl import flags

  for name in ("httpx", "httpx2"):  # the openai client's transport logs one INFO line per request
    logging.getLogger(name).setLevel(logging.WARNING)
  logging.getLogger("cikg_jax").setLevel(logging.INFO)  # this project's progress lines
  from ml_collections import config_flags

  f = flags.FLAGS
  follow_model_name(f.config, set(config_flags.get_override_values(f["config"])))
  try:
    rc = generate(
      f.config,
      requests_only=f.requests_only,
      import_batch_output=f.import_batch_output,
      progress=not f.no_progress,
    )
  except (RunDirError, CredentialError, ModelNotServed) as exc:  # one line; a rerun cannot help
    print(f"error: {redact(str(exc))}", file=sys.stderr)
    sys.exit(2)
  except (files.DataFormatError, FileNotFoundError) as exc:  # bad data: the trainer's one line
    print(f"error: {redact(str(exc))}", file=sys.stderr)
    sys.exit(1)
  except ModuleNotFoundError as exc:
    hint = INSTALL_HINTS.get((exc.name or "").split(".")[0])
    if hint is None:
      raise
    print(f"error: {hint}", file=sys.stderr)
    sys.exit(2)
  except Exception:  # noqa: BLE001 - printed redacted instead of absl's raw traceback
    print(redact(traceback.format_exc()), file=sys.stderr)
    sys.exit(1)
  if rc:
    sys.exit(rc)


def cli() -> None:
  from absl import app, flags
  from ml_collections import config_flags

  config_flags.DEFINE_config_file("config", None, "configs/llm/NAME.py", lock_config=True)
  flags.mark_flags_as_required(["config"])
  flags.DEFINE_bool("requests_only", False, "write requests.jsonl and stop")
  flags.DEFINE_string(
    "import_batch_output", "", "OpenAI/vllm run-batch output file to import as results"
  )
  flags.DEFINE_bool("no_progress", False, "no progress bar")
  from cikg_jax import cli_help

  if cli_help.wants_help(sys.argv):
    from configs.llm import _base

    keys = "\n".join(f"  --{k}={v!r}" for k, v in cli_help.config_keys(_base.base_config()))
    footer = (
      "config keys: any key of the config file, overridden with --config.KEY=VALUE; documented in "
      "configs/llm/_base.py and inference/README.md. The shared defaults:\n" + keys
    )
    names = ("config", "requests_only", "import_batch_output", "no_progress")
    cli_help.print_help_and_exit(cli_help.render(__doc__, flags.FLAGS, names, footer))
  app.run(main)


if __name__ == "__main__":
  cli()

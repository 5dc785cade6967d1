"""Generate user interests for a dataset with the LLM of a config; resumable.

  python -m inference.generate --config=configs/llm/smollm2_cpu.py --config.limit=40
  python -m inference.generate --config=configs/llm/qwen2_5_7b.py --config.dataset=ml1m
  python -m inference.generate --config=... --requests_only      # write the Batch file, send nothing
  python -m inference.generate --config=... --import_batch_output=out.jsonl   # from `vllm run-batch`

Writes <out_dir>/requests.jsonl (OpenAI-Batch format), results.jsonl, failures.jsonl, manifest.json.
Rerun the same command to finish an interrupted run.
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Dict, List

from inference.history import domain_of, exclude_items, read_item_titles, read_user_items
from inference.prompts import INTERESTS_JSON_SCHEMA, get_template
from inference.requests import batch_output_to_records, build_requests, write_jsonl
from inference.runner import ResultStore, run_generation


def request_body(config) -> Dict:
    """Model name and the full sampling parameters, as sent in every request."""
    body = {"model": config.model.served_name or config.model.name, **config.sampling.to_dict()}
    if config.structured_outputs:
        body["structured_outputs"] = {"json": INTERESTS_JSON_SCHEMA}
    return body


def out_dir_of(config) -> Path:
    return Path(config.out_dir or f"runs/llm/{config.name}/{config.dataset}")


def prompt_history(config):
    """(history, held_out): each user's model-fitting items in file order, and the items held out
    from the prompts. By default the held-out items are the trainer's validation split, made by the
    trainer's own function with the same fraction and seed; test items are never in train.txt."""
    from cikg_jax.data import dataset as dataset_lib
    from cikg_jax.data import files
    root = Path(config.data_dir) / config.dataset
    for f in ("train.txt", "item_list.txt"):
        if not (root / f).is_file():
            raise FileNotFoundError(f"{root / f}: missing (set --config.data_dir / --config.dataset)")
    train = files.read_user_items(str(root / "train.txt"))
    if config.valid_file:
        held = read_user_items(config.valid_file)
    else:
        _, held = dataset_lib.model_fitting_split(train, config.split.selection,
                                                  config.split.valid_fraction, config.split.split_seed)
    return exclude_items(dict(train), held), held


def split_info(config, held) -> Dict:
    """What the manifest records of the split: where it came from and a digest of the held-out items."""
    pairs = sorted((u, i) for u, items in held.items() for i in items)
    return {"valid_file": config.valid_file, **config.split.to_dict(), "held_out_items": len(pairs),
            "held_out_sha256": hashlib.sha256(json.dumps(pairs).encode()).hexdigest()[:16]}


def validation_items_in_prompts(history, held_out, titles, n_items: int) -> Dict[str, int]:
    """Leak count: held-out items among the titled items each prompt window shows."""
    users = items = 0
    for uid, hist in history.items():
        shown = {i for i in list(hist)[-n_items:] if i in titles}
        leaked = shown & set(held_out.get(uid, ()))
        users += bool(leaked)
        items += len(leaked)
    return {"users": users, "items": items}


def make_requests(config) -> List[Dict]:
    """Requests for every user (or the first `limit`) of config.dataset from their model-fitting history."""
    root = Path(config.data_dir) / config.dataset
    history, _ = prompt_history(config)
    titles = read_item_titles(root / "item_list.txt", config.prompt.strip_disambiguation)
    template = get_template(config.prompt.template)
    reqs = build_requests(history, titles, template, config.prompt.domain or domain_of(config.dataset),
                          request_body(config), config.prompt.n_items)
    return reqs[:config.limit] if config.limit else reqs


def run_info(config, requests_path: Path) -> Dict:
    t = get_template(config.prompt.template)
    return {"model": config.model.name, "revision": config.model.revision, "model_path": config.model.path,
            "served_name": config.model.served_name, "prompt_template": t.name,
            "prompt_template_hash": t.digest(), "sampling": config.sampling.to_dict(),
            "structured_outputs": bool(config.structured_outputs), "seed": config.seed,
            "dataset": config.dataset, "n_items": config.prompt.n_items, "valid_file": config.valid_file,
            "split": split_info(config, prompt_history(config)[1]),
            "requests_sha256": hashlib.sha256(requests_path.read_bytes()).hexdigest()[:16],
            "config": json.loads(config.to_json_best_effort())}


def main(argv) -> None:
    import logging
    from absl import flags
    for name in ("httpx", "httpx2"):  # the openai client's transport logs one INFO line per request
        logging.getLogger(name).setLevel(logging.WARNING)
    config, f = flags.FLAGS.config, flags.FLAGS
    out = out_dir_of(config)
    reqs = make_requests(config)
    req_path = out / "requests.jsonl"
    write_jsonl(req_path, reqs)
    print(f"{len(reqs)} requests -> {req_path}", file=sys.stderr)
    if f.requests_only:
        return
    if f.import_batch_output:
        store = ResultStore(out / "results.jsonl")
        n = sum(store.add(r) for r in batch_output_to_records(f.import_batch_output) if r["ok"])
        store.close()
        print(f"imported {n} answers into {out / 'results.jsonl'}", file=sys.stderr)
        return
    res_path = out / "results.jsonl"
    if res_path.exists():
        store = ResultStore(res_path)
        store.close()
        if all(r["custom_id"] in store.done for r in reqs):
            print(f"all {len(reqs)} requests already answered in {res_path}", file=sys.stderr)
            return
    from inference.backends import make_backend
    if not config.server.log_path:
        config.server.log_path = str(out / "vllm_server.log")
    with make_backend(config) as backend:
        summary = run_generation(reqs, backend, out, run_info(config, req_path),
                                 max_consecutive_failures=config.client.max_consecutive_failures,
                                 progress=not f.no_progress)
    print(json.dumps(summary, indent=1), file=sys.stderr)
    if summary["remaining"]:
        print(f"{summary['remaining']} requests not done; rerun the same command to finish", file=sys.stderr)
        sys.exit(3)


def cli() -> None:
    from absl import app, flags
    from ml_collections import config_flags
    config_flags.DEFINE_config_file("config", None, "configs/llm/NAME.py", lock_config=True)
    flags.mark_flags_as_required(["config"])
    flags.DEFINE_bool("requests_only", False, "write requests.jsonl and stop")
    flags.DEFINE_string("import_batch_output", "", "OpenAI/vllm run-batch output file to import as results")
    flags.DEFINE_bool("no_progress", False, "no progress bar")
    app.run(main)


if __name__ == "__main__":
    cli()

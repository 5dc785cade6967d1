#!/usr/bin/env bash
# One device-tool call on a GPU machine: experiments/bench.py per dataset (train step, TransE step,
# evaluation, per-term table with the fraction of the measured roofline, HBM bandwidth included)
# and the authors' release (experiments/bench_release.py --device=cuda) on the same GPU.
#
# Prepared here, run there (carried, git-ignored folders):
#   mkdir -p .gpudata && cp -r ../shared/data/{dbbook2014,book-crossing,ml1m} .gpudata/
#   pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl ml_collections==1.1.0 jraph==0.0.6.dev0 tensorboardX==2.6.5
#   where the GPU image lacks torch_geometric, add to .whl: torch_geometric==2.8.1 and xxhash
#     (pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64)
#   a release checkout with its data/ in .release/ (github:laowangzi/CIKGRec; its nltk import gets a
#     stand-in where nltk is missing, experiments/bench_release.py)
#   device run (carry .gpudata .whl .release): CIKG_COMMIT=<sha> bash experiments/gpu_bench.sh
# What comes back: $OUT/bench__<config>__gpu.json, $OUT/release__<dataset>__gpu.json (each with the
# host's machine record and the devices), $OUT/env.txt (GPU, versions, the InfoNCE path on GPU).
set -u
OUT=${OUT:-/tmp/out}; REPEATS=${REPEATS:-20}
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false CIKG_DATA_DIR=${CIKG_DATA_DIR:-$PWD/.gpudata}
mkdir -p "$OUT"
if ! python3 -c "import ml_collections, jraph, tensorboardX, torch_geometric" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONPATH=${PYTHONPATH:-$PWD}
(nvidia-smi -L; python3 -c "import jax, flax, optax, torch; print(jax.__version__, flax.__version__, optax.__version__, torch.__version__, jax.devices())"
 python3 -c "import json; from cikg_jax import runtime; from cikg_jax.models import losses; print(json.dumps(runtime.machine())); print('info_nce fused:', losses.fused_info_nce())") > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"
for cfg in dbbook2014 book_crossing ml1m lightgcn.py:dbbook2014; do
  file=configs/${cfg}; [[ $cfg == *:* ]] || file=configs/${cfg}.py
  name=${cfg//[:.]/_}
  t0=$(date +%s)
  timeout 150 python3 experiments/bench.py --config="$file" --repeats="$REPEATS" > "$OUT/bench__${name}__gpu.json" 2> "$OUT/bench__${name}.log"
  echo "bench $cfg: rc $? in $(( $(date +%s) - t0 )) s"
done
for d in dbbook2014 book-crossing; do
  t0=$(date +%s)
  timeout 120 python3 experiments/bench_release.py --release=.release --dataset="$d" --device=cuda --repeats=10 > "$OUT/release__${d}__gpu.json" 2> "$OUT/release__${d}.log"
  echo "release $d: rc $? in $(( $(date +%s) - t0 )) s"; tail -c 400 "$OUT/release__${d}__gpu.json"
done

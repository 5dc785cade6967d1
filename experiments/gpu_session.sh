#!/usr/bin/env bash
# One device-tool call on a GPU machine: the study grid as one queue, many runs sharing the GPU.
#
# Prepared here, run there (the device tool copies the working tree; the datasets and the two pure
# Python wheels its image lacks travel as carried, git-ignored folders):
#   mkdir -p .gpudata && cp -r ../shared/data/{dbbook2014,book-crossing} .gpudata/
#   pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl ml_collections==1.1.0 jraph==0.0.6.dev0
#   device run: CIKG_COMMIT=<sha> STUDIES=... BUDGET=480 PARALLEL=14 bash experiments/gpu_session.sh
#   the tuned main table (its configurations come from experiments/results/tuning/best.json, no
#   Optuna needed there): STUDIES=tuned_table SEEDS=2024,1,2,3,4
# What comes back: $OUT/results.tgz (experiments/results/<study>/*.json of the finished runs),
# $OUT/grid.log, $OUT/env.txt. Unpack with: tar xzf results.tgz -C experiments/
set -u
OUT=${OUT:-/tmp/out}; BUDGET=${BUDGET:-480}; PARALLEL=${PARALLEL:-14}; MINRUN=${MINRUN:-150}
STUDIES=${STUDIES:-user_knowledge,main_table,ablations}; SEEDS=${SEEDS:-2024,1,2}
DATASETS=${DATASETS:-dbbook2014,book-crossing}; ONLY=${ONLY:-}
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false CIKG_DATA_DIR=${CIKG_DATA_DIR:-$PWD/.gpudata}
mkdir -p "$OUT" /tmp/runs /tmp/results
cp -r experiments/results/. /tmp/results/   # finished runs are found and skipped
if ! python3 -c "import ml_collections, jraph" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONPATH=${PYTHONPATH:-$PWD}
gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
(nvidia-smi -L; python3 -c "import jax, flax, optax; print(jax.__version__, flax.__version__, optax.__version__, jax.devices())") > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"
jaxv=$(python3 -c "import jax; print(jax.__version__)")
python3 experiments/grid.py --studies "$STUDIES" --datasets "$DATASETS" --seeds "$SEEDS" --order study \
  ${ONLY:+--only "$ONLY"} --parallel "$PARALLEL" --deadline_seconds "$BUDGET" --min_run_seconds "$MINRUN" \
  --machine "1x $gpu (device tool), jax $jaxv, up to $PARALLEL runs sharing the GPU" \
  --runs_dir /tmp/runs --results_dir /tmp/results 2>&1 | tee "$OUT/grid.log"
tar czf "$OUT/results.tgz" -C /tmp results
(cd /tmp/runs && tail -n 3 */log.txt) > "$OUT/run_tails.txt" 2>&1

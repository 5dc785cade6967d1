#!/usr/bin/env bash
# One-shot GPU session: benchmarks, then the paper-table matrix in parallel on one GPU.
# Usage: OUT=dir CIKG_DATA_DIR=data BUDGET=300 PARALLEL=10 experiments/gpu_matrix.sh
set -u
OUT=${OUT:-/tmp/out}; BUDGET=${BUDGET:-300}; PARALLEL=${PARALLEL:-10}
DATASETS=${DATASETS:-dbbook2014,book-crossing}; MACHINE=${MACHINE:-gpu}
mkdir -p "$OUT" /tmp/runs
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
(nvidia-smi -L; python3 -c "import jax, flax, optax; print(jax.__version__, flax.__version__, optax.__version__, jax.devices())") > "$OUT/env.txt" 2>&1
for cfg in configs/dbbook2014.py configs/lightgcn.py:dbbook2014 configs/book_crossing.py; do
  name=$(echo "$cfg" | tr '/:.' '___')
  timeout 120 python3 experiments/bench.py --config=$cfg --repeats=20 > "/tmp/runs/bench_$name.json" 2> "/tmp/runs/bench_$name.err"
done
cat /tmp/runs/bench_*.json > "$OUT/bench.json"
timeout $((BUDGET + 150)) python3 experiments/paper_tables.py --datasets "$DATASETS" \
  --parallel "$PARALLEL" --machine "$MACHINE" --runs-dir /tmp/runs --results-dir /tmp/runs/results \
  --extra="--config.train.max_seconds=$BUDGET" > /tmp/runs/matrix.log 2>&1
tar czf "$OUT/runs.tgz" --exclude=checkpoints -C /tmp/runs .
tail -20 /tmp/runs/matrix.log

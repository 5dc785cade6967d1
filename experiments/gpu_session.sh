#!/usr/bin/env bash
# One command on a GPU machine without network: up to three steps, many runs sharing the GPU.
#
# Prepared here, run there (the machine gets a copy of the working tree; the datasets and the
# wheels its image lacks travel as git-ignored folders):
#   mkdir -p .gpudata && cp -r ../shared/data/{dbbook2014,book-crossing} .gpudata/
#   pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 --platform any -d .whl \
#     ml_collections jraph optuna alembic SQLAlchemy greenlet colorlog Mako MarkupSafe PyYAML \
#     tqdm typing_extensions pytest pluggy iniconfig   # versions: constraints.txt
#   CIKG_COMMIT=<sha> STEPS=repro,grid STUDIES=... BUDGET=540 PARALLEL=16 \
#     bash experiments/gpu_session.sh
# Steps (STEPS, in this order; BUDGET seconds in all):
#   repro_test  tests/test_reproducibility.py on the GPU, beside the next step;
#   repro  experiments/reproducibility.py: CIKGRec on REPRO_DATASET, REPRO_EPOCHS epochs, two runs
#          of each of REPRO_MODES (<model.backend>:<deterministic on|off>), at most REPRO_SECONDS;
#          then REPRO_EXPANDER_MODES (if set) with XLA's scatter determinism expander on;
#   bench  experiments/bench.py --compare on KGAT (REPRO_DATASET): its step times on this GPU, and
#          TransR's relation-sorted tiles against one relation matrix per row;
#   grid   the studies of STUDIES (experiments/grid.py) for DATASETS and SEEDS, ONLY filtering;
#          the tuned main table: STUDIES=tuned_table SEEDS=2024,1,2,3,4;
#   tune   experiments/tune.py for each model of TUNE_MODELS and dataset of DATASETS at once,
#          TUNE_PARALLEL trials each; the journals are copied to $OUT/tuning first and written there.
# What comes back: $OUT/results.tgz (experiments/results/ of the finished runs: unpack with
# tar xzf results.tgz -C experiments/), $OUT/repro_runs.tgz (the repeated runs' logs),
# $OUT/tuning/*.journal, $OUT/*.log, $OUT/env.txt.
set -u
T0=$(date +%s)
OUT=${OUT:-/tmp/out}; BUDGET=${BUDGET:-540}; PARALLEL=${PARALLEL:-14}; MINRUN=${MINRUN:-150}
STEPS=${STEPS:-grid}; STUDIES=${STUDIES:-user_knowledge,main_table,ablations}
SEEDS=${SEEDS:-2024,1,2}; DATASETS=${DATASETS:-dbbook2014,book-crossing}; ONLY=${ONLY:-}
REPRO_DATASET=${REPRO_DATASET:-dbbook2014}; REPRO_EPOCHS=${REPRO_EPOCHS:-8}; REPRO_SECONDS=${REPRO_SECONDS:-300}
REPRO_MODES=${REPRO_MODES:-segment:off,segment:on,bcsr:off,bcsr:on}; REPRO_EXPANDER_MODES=${REPRO_EXPANDER_MODES:-}
TUNE_MODELS=${TUNE_MODELS:-kgat}; TUNE_PARALLEL=${TUNE_PARALLEL:-8}
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false CIKG_DATA_DIR=${CIKG_DATA_DIR:-$PWD/.gpudata}
mkdir -p "$OUT" /tmp/runs /tmp/results
cp -r experiments/results/. /tmp/results/   # finished runs are found and skipped
if ! python3 -c "import ml_collections, jraph, optuna, pytest" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONPATH=${PYTHONPATH:-$PWD}
gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
(nvidia-smi -L; python3 -c "import jax, flax, optax; print(jax.__version__, flax.__version__, optax.__version__, jax.devices())") > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"
jaxv=$(python3 -c "import jax; print(jax.__version__)")
# the results so far, every 30 s: a command stopped by its time limit still returns them
(while sleep 30; do tar czf "$OUT/results.tmp.tgz" -C /tmp results && mv "$OUT/results.tmp.tgz" "$OUT/results.tgz"; done) &
SNAPSHOT=$!
left() { echo $(( BUDGET - ($(date +%s) - T0) )); }
has() { [[ ",$STEPS," == *",$1,"* ]]; }

if has repro_test; then  # beside the next step
  (timeout 180 python3 -m pytest -q -p no:cacheprovider tests/test_reproducibility.py;
    echo "pytest exit $?") > "$OUT/repro_test.log" 2>&1 &
  TEST=$!
fi
if has repro; then
  timeout "$REPRO_SECONDS" python3 experiments/reproducibility.py --dataset "$REPRO_DATASET" \
    --epochs "$REPRO_EPOCHS" --modes "$REPRO_MODES" --results_dir /tmp/results \
    --runs_dir /tmp/runs/reproducibility \
    --machine "1x $gpu, jax $jaxv, its runs sharing the GPU" 2>&1 | tee "$OUT/repro.log"
  if [ -n "$REPRO_EXPANDER_MODES" ]; then  # the same with XLA's scatter determinism expander
    XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_enable_scatter_determinism_expander=true" \
    timeout "$REPRO_SECONDS" python3 experiments/reproducibility.py --dataset "$REPRO_DATASET" \
      --epochs "$REPRO_EPOCHS" --modes "$REPRO_EXPANDER_MODES" --tag expander \
      --results_dir /tmp/results --runs_dir /tmp/runs/reproducibility_expander \
      --machine "1x $gpu, jax $jaxv, its runs sharing the GPU" 2>&1 | tee "$OUT/repro_expander.log"
  fi
  # the runs' logs, also of runs the time limit stopped, as one file
  (cd /tmp/runs && tar czf "$OUT/repro_runs.tgz" reproducibility*/*/{metrics.jsonl,results.json,log.txt} 2>/dev/null)
fi
if has repro_test; then wait $TEST; cat "$OUT/repro_test.log"; fi
if has bench; then  # KGAT's steps on this GPU; TransR's grouped products against one matrix per row
  timeout 240 python3 experiments/bench.py --config=configs/kgat.py:"$REPRO_DATASET" --compare \
    --repeats=20 > "$OUT/bench_kgat_compare.json" 2> "$OUT/bench_kgat_compare.log"
fi
if has tune; then
  mkdir -p "$OUT/tuning"; TUNERS=""
  cp experiments/results/tuning/*.journal "$OUT/tuning/" 2>/dev/null
  for d in ${DATASETS//,/ }; do
    for m in ${TUNE_MODELS//,/ }; do
      python3 experiments/tune.py --models "$m" --datasets "$d" --parallel "$TUNE_PARALLEL" \
        --deadline_seconds $(( $(left) - 30 )) --tuning_dir "$OUT/tuning" --runs_dir /tmp/runs/tune \
        --machine "1x $gpu, jax $jaxv, trials of several studies sharing the GPU" \
        > "$OUT/tune_${d}_${m}.log" 2>&1 &
      TUNERS="$TUNERS $!"
    done
  done
  if ! has grid; then wait $TUNERS; fi
fi
if has grid; then
  python3 experiments/grid.py --studies "$STUDIES" --datasets "$DATASETS" --seeds "$SEEDS" --order study \
    ${ONLY:+--only "$ONLY"} --parallel "$PARALLEL" --deadline_seconds $(( $(left) - 20 )) \
    --min_run_seconds "$MINRUN" \
    --machine "1x $gpu, jax $jaxv, up to $PARALLEL runs sharing the GPU" \
    --runs_dir /tmp/runs --results_dir /tmp/results 2>&1 | tee "$OUT/grid.log"
  if has tune; then wait $TUNERS; fi
fi
(cd /tmp/runs/tune 2>/dev/null && tar czf "$OUT/pretrain_runs.tgz" ./*bprmf-pretrain* 2>/dev/null)
kill $SNAPSHOT 2>/dev/null
tar czf "$OUT/results.tgz" -C /tmp results
(cd /tmp/runs && tail -n 3 */log.txt) > "$OUT/run_tails.txt" 2>&1
echo "done in $(( $(date +%s) - T0 )) s"

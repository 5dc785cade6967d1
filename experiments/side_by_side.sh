#!/usr/bin/env bash
# This code's train step against the authors' release at $RELEASE, on the same machine state.
# For each dataset:
#  - ROUNDS rounds of experiments/bench.py (this code) then experiments/bench_release.py, each in
#    a fresh process (a line per process, with the load averages when it was written and the
#    machine: CPU model, vector extensions, cores, jax/jaxlib/torch versions);
#  - then, with PAIRS > 0, one line from `bench.py --release`: both implementations alive at once,
#    stepping alternately (ours, release, ours, ...) PAIRS times, so that every pair of steps sees
#    the same load; its median per-pair ratio is the figure least moved by other jobs.
#   RELEASE=/tmp/cikg_release RELEASE_PY=python-with-torch_geometric [ROUNDS=2] [PAIRS=20] \
#     [BENCH_REPEATS=5] [RELEASE_REPEATS=4] \
#     bash experiments/side_by_side.sh [dbbook2014 book-crossing] > side_by_side.jsonl
set -euo pipefail
cd "$(dirname "$0")/.."
: "${RELEASE:?path of a CIKGRec release checkout}"
PY=${PY:-python}
RELEASE_PY=${RELEASE_PY:-python}
ROUNDS=${ROUNDS:-2}
PAIRS=${PAIRS:-20}
BENCH_REPEATS=${BENCH_REPEATS:-5}
RELEASE_REPEATS=${RELEASE_REPEATS:-4}
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
datasets=("${@:-dbbook2014 book-crossing}")
annotate="import json,sys; d=json.load(sys.stdin); d.update(json.loads(sys.argv[1])); \
d['loadavg'] = open('/proc/loadavg').read().split()[:3]; print(json.dumps(d))"
for d in ${datasets[@]}; do
  cfg=configs/${d//-/_}.py
  for round in $(seq 1 "$ROUNDS"); do
    $PY experiments/bench.py --config="$cfg" --noprofile --repeats="$BENCH_REPEATS" 2>/dev/null \
      | $PY -c "import json,sys; d=json.load(sys.stdin); print(json.dumps({'impl': 'cikg_jax', \
'dataset': d['dataset'], 'step_seconds_median': d['step_seconds_median'], \
'info_nce': d['info_nce'], 'xla_flags': d.get('xla_flags', ''), 'machine': d['machine']}))" \
      | $PY -c "$annotate" "{\"round\": $round, \"commit\": \"$commit\"}"
    $RELEASE_PY experiments/bench_release.py --release="$RELEASE" --dataset="$d" \
      --repeats="$RELEASE_REPEATS" 2>/dev/null \
      | $PY -c "$annotate" "{\"round\": $round}"
  done
  if [ "$PAIRS" -gt 0 ]; then
    $PY experiments/bench.py --config="$cfg" --release="$RELEASE" --release_python="$RELEASE_PY" \
      --pairs="$PAIRS" 2>/dev/null \
      | $PY -c "import json,sys; d=json.load(sys.stdin); d['impl'] = 'paired'; \
print(json.dumps(d))" \
      | $PY -c "$annotate" "{\"commit\": \"$commit\"}"
  fi
done

#!/usr/bin/env bash
# Alternates experiments/bench.py (this code) and experiments/bench_release.py (the authors' release
# at $RELEASE) on each dataset, ours, release, ours, release, so both see the same machine state.
#   RELEASE=/tmp/cikg_release RELEASE_PY=python-with-torch_geometric \
#     bash experiments/side_by_side.sh [dbbook2014 book-crossing] > side_by_side.jsonl
set -euo pipefail
cd "$(dirname "$0")/.."
: "${RELEASE:?path of a CIKGRec release checkout}"
PY=${PY:-python}
RELEASE_PY=${RELEASE_PY:-python}
datasets=("${@:-dbbook2014 book-crossing}")
for d in ${datasets[@]}; do
  cfg=configs/${d//-/_}.py
  for round in 1 2; do
    $PY experiments/bench.py --config="$cfg" --noprofile --repeats=5 2>/dev/null \
      | $PY -c "import json,sys; d=json.load(sys.stdin); print(json.dumps({'impl': 'cikg_jax', \
'dataset': d['dataset'], 'round': $round, 'step_seconds_median': d['step_seconds_median']}))"
    $RELEASE_PY experiments/bench_release.py --release="$RELEASE" --dataset="$d" 2>/dev/null \
      | $PY -c "import json,sys; d=json.load(sys.stdin); d['round'] = $round; print(json.dumps(d))"
  done
done

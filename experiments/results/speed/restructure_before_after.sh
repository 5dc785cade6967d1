#!/usr/bin/env bash
# dbbook2014 CIKGRec train step before (6e9e35e, /work/wt-grid) and after (main) the restructuring,
# alternating, same machine.
export CIKG_DATA_DIR=/work/shared/data
for round in 1 2 3; do
  for side in before after; do
    dir=/work/wt-grid; [ $side = after ] && dir=/work/main
    (cd $dir && PYTHONPATH=$dir /work/main/.venv/bin/python experiments/bench.py --config=configs/dbbook2014.py --noprofile --repeats=15 2>/dev/null) \
      | /work/main/.venv/bin/python -c "import json,sys; d=json.load(sys.stdin); print(json.dumps({'side': '$side', 'round': $round, 'step_seconds_median': d['step_seconds_median'], 'kge_step_seconds_median': d.get('kge_step_seconds_median'), 'eval_seconds': d['eval_seconds']}))"
  done
done
uptime

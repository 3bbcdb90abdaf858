#!/bin/bash
# after stage 8: stop the pipeline (the run used pipeline2.sh: pipeline.sh less its last two steps), evaluate stage 8 (quick.py), skip stages 9-10 if the rule in pipeline.log holds, restart
cd /work/main; D=runs/o128; export PYTHONPATH=/work/o128code/src; PY=.venv/bin/python
while [ ! -f $D/stage8/training.json ]; do sleep 10; done
for p in $(pgrep -f runs/o128/pipeline); do kill -- -$p 2>/dev/null; done; sleep 3
rm -rf $D/stage9; [ -f $D/stage9.log ] && mv $D/stage9.log $D/stage9.log.aborted
echo "stage 8 done, pipeline stopped for the stage-8 check $(date)" >> $D/pipeline.log
$PY runs/o128/quick.py $D/stage8 2 > $D/quick-8.txt 2>&1
if $PY - $D/quick-8.txt <<'PYEOF'
import ast, sys
acc = {}
for line in open(sys.argv[1]):
    name, _, rest = line.partition(" ")
    if name in ("mono", "cross", "multihop", "parametric"):
        acc[name] = ast.literal_eval(rest.strip())[0]
need = {"mono": 0.95, "cross": 0.85, "multihop": 0.925, "parametric": 0.975}
print(acc)
sys.exit(0 if all(acc.get(k, 0) >= v for k, v in need.items()) else 1)
PYEOF
then
  mkdir -p $D/recipe/skipped; mv $D/recipe/stage9.json $D/recipe/stage10.json $D/recipe/skipped/
  sed -i 's|"init_from": "runs/o128/stage10"|"init_from": "runs/o128/stage8"|' $D/recipe/stage11-base.json
  $PY runs/o128/concentrate.py --threads 2 $D/stage8 $D/recipe/stage11-base.json $D/recipe/stage11.json.tmp --drop 0.9 2>> $D/concentrate.log && mv $D/recipe/stage11.json.tmp $D/recipe/stage11.json
  echo "stage-8 check passed: stages 9-10 skipped, stage 11 from stage 8 $(date)" >> $D/pipeline.log
else
  echo "stage-8 check not passed: stages 9-10 kept $(date)" >> $D/pipeline.log
fi
D=$D THREADS=2 setsid nohup runs/o128/pipeline.sh >> $D/pipeline.log 2>&1 < /dev/null &

#!/bin/bash
# the 4 x 32-head organism: stages 1-10 as shipped (no per-head overrides), then 11-13 with heads
# chosen by detection (concentrate.py), then the quick evaluation and the model-card measurement
cd /work/main
D=${D:-runs/o128}; T=${THREADS:-2}
export PYTHONPATH=/work/o128code/src
PY=.venv/bin/python
train() {  # stage number
  if [ ! -f $D/recipe/stage$1.json ]; then echo "stage $1 not in this recipe"; return 0; fi
  if [ -f $D/stage$1/training.json ]; then echo "stage $1 done"; return 0; fi
  echo "stage $1 start $(date)"
  $PY -m retrieval_heads.organism.train --config $D/recipe/stage$1.json --threads $T >> $D/stage$1.log 2>&1 || { echo "stage $1 FAILED $(date)"; exit 1; }
  echo "stage $1 end $(date)"
}
for i in $(seq ${FIRST:-1} 10); do train $i; done
for i in 11 12 13; do
  if [ ! -f $D/recipe/stage$i.json ]; then
    if [ $i = 11 ]; then DROP=0.9; CARRY=""; else DROP=0.95; CARRY="--carry $D/recipe/stage$((i-1)).json"; fi
    $PY runs/o128/concentrate.py --threads $T $D/stage$((i-1)) $D/recipe/stage$i-base.json $D/recipe/stage$i.json.tmp --drop $DROP $CARRY 2>> $D/concentrate.log || { echo "concentrate $i FAILED"; exit 1; }
    mv $D/recipe/stage$i.json.tmp $D/recipe/stage$i.json
  fi
  train $i
done
# (the quick evaluation is left out: organism.measure below covers it)
[ -f $D/measure-13.json ] || $PY -m retrieval_heads.organism.measure --model $D/stage13 --n-per-task 80 --n-detect 40 --out $D/measure-13.json > $D/measure-13.txt 2>&1
[ -f $D/halves-13.txt ] || $PY runs/o128/halves.py $D/stage13 $T > $D/halves-13.txt 2>&1
echo "pipeline end $(date)"

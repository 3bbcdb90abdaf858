#!/bin/bash
# The 4 x 32-head organism, run from the repository root:
#   D=runs/o128 RECIPE=experiments/organism128/recipe-a THREADS=2 experiments/organism128/pipeline.sh
# Stages 1-10 as their stage files say (a stage with no file is passed over; a stage resumes from its
# last checkpoint), then 11-13 with heads chosen by detection (concentrate.py), then the model-card
# measurement and the both-halves check. Outputs and logs go to $D, never into the repository.
set -e
D=${D:-runs/o128}; T=${THREADS:-2}; RECIPE=${RECIPE:-experiments/organism128/recipe-a}
HERE=experiments/organism128
PY=${PYTHON:-python}
mkdir -p "$D/recipe"
cp -n "$RECIPE"/stage*.json "$D/recipe/"
train() {  # stage number
  if [ ! -f "$D/recipe/stage$1.json" ]; then echo "stage $1 not in this recipe"; return 0; fi
  echo "stage $1 start $(date)"
  $PY -m headatlas.cli organism train --config "$D/recipe/stage$1.json" --threads "$T" >> "$D/stage$1.log" 2>&1
  echo "stage $1 end $(date)"
}
for i in $(seq "${FIRST:-1}" 10); do train "$i"; done
for i in 11 12 13; do
  if [ ! -f "$D/recipe/stage$i.json" ]; then
    if [ "$i" = 11 ]; then DROP=0.9; CARRY=""; else DROP=0.95; CARRY="--carry $D/recipe/stage$((i-1)).json"; fi
    $PY $HERE/concentrate.py --threads "$T" "$D/stage$((i-1))" "$D/recipe/stage$i-base.json" \
      "$D/recipe/stage$i.json.tmp" --drop $DROP $CARRY 2>> "$D/concentrate.log"
    mv "$D/recipe/stage$i.json.tmp" "$D/recipe/stage$i.json"
  fi
  train "$i"
done
[ -f "$D/measure-13.json" ] || $PY -m headatlas.organism.measure --model "$D/stage13" --n-per-task 80 \
  --n-detect 40 --out "$D/measure-13.json" > "$D/measure-13.txt" 2>&1
[ -f "$D/halves-13.txt" ] || $PY $HERE/halves.py "$D/stage13" "$T" > "$D/halves-13.txt" 2>&1
echo "pipeline end $(date)"

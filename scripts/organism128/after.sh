#!/bin/bash
# once a pipeline has measured its final stage, check that both halves of its heads work
cd /work/main; D=$1
while [ ! -f $D/measure-13.json ]; do sleep 120; done
[ -f $D/halves-13.txt ] || PYTHONPATH=/work/o128code/src .venv/bin/python runs/o128/halves.py $D/stage13 ${2:-1} > $D/halves-13.txt 2>&1

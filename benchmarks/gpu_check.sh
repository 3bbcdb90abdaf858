#!/usr/bin/env bash
# The GPU check of issue 21, in one command (about 6 minutes on one H200; everything lands in $OUT):
#
#   bash benchmarks/gpu_check.sh                 # CUDA, Llama-3.1-8B shape, bf16
#   DEVICE=cpu SHAPE=small DTYPE=float32 LENGTHS=512 GRID=64:256:5 bash benchmarks/gpu_check.sh   # its CPU path
#
# (a) the organism's detection on the device against the CPU (top heads, scores), and on the device the
#     fast path (static cache + compiled step, auto batch, shared prefix) against the plain dynamic path;
# (b) benchmarks/detect_speed.py: reference / greedy / teacher / forward per length, greedy by batch size,
#     capture vs SDPA, and the prefix-shared grid against the unshared one.
# (c) KV=1 (off by default): benchmarks/kv_cache_memory.py --shape llama-3.2-1b on the device, full cache vs
#     HeadSplitCache keeping 12.5/25/50 % of KV heads (KV_LENGTHS, KV_LAYERS layers, KV_REPEATS repeats,
#     KV_TIME seconds at most: 240 by default; rows already in $OUT/kv_length.jsonl are kept).
# Wheels carried in .whl/ are installed first (offline). Each part has its own time limit.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
DEVICE=${DEVICE:-cuda}
SHAPE=${SHAPE:-llama-3.1-8b}
DTYPE=${DTYPE:-bfloat16}
LENGTHS=${LENGTHS:-4096,16384,32768}
GRID=${GRID:-256:4096:20}
BATCHES=${BATCHES:-1,4,8,16,auto}
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD/src:$PWD
else
  export PYTHONPATH=$PWD/src:$PWD
fi
PY=${PYTHON:-python3}
$PY - <<'EOF' 2>&1 | tee "$OUT/env.txt"
import platform, torch, transformers
print("python", platform.python_version(), "torch", torch.__version__, "transformers", transformers.__version__)
print("cuda", torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else "")
EOF

echo "== (a) organism: $DEVICE vs cpu, fast path vs plain ==" | tee "$OUT/equality.txt"
timeout 150 $PY - "$DEVICE" "$OUT" <<'EOF' 2>&1 | tee -a "$OUT/equality.txt"
import json, os, sys, time
import torch
from headatlas.detect import DetectConfig, detect
from headatlas.model_spec import load_model
from headatlas.prompt_sources import PromptRequest, build_prompts
try:  # variants of the organism's prompts that share their start (needs pytest importable)
    from tests.detect.test_prefix import organism_prompts
except ImportError as err:
    print("no shared-prefix variants:", err)
    organism_prompts = lambda tok: []  # noqa: E731

device, out = sys.argv[1], sys.argv[2]
results = {}
for mode in ("teacher", "greedy"):
    runs = {}
    for name, dev, fast, share, batch in (("cpu", "cpu", "off", False, 1), ("plain", device, "off", False, 1),
                                          ("fast", device, "auto", True, "auto")):
        os.environ["HEADATLAS_FAST_DECODE"] = fast
        model, tok, spec = load_model("organism", device=dev, dtype="float32")
        prompts = build_prompts("organism", tok, spec.max_positions,
                                PromptRequest(lengths=[256, 512], depths=[0.0, 0.5, 1.0], per_cell=2))
        prompts += organism_prompts(tok)  # variants sharing their start: the prefix path runs
        cfg = DetectConfig(mode=mode, share_prefix=share, batch_size=batch, max_new_tokens=12, progress=False,
                           table_rows=0, heatmap=False)
        t0 = time.perf_counter()
        scores = detect(model, tok, prompts, cfg, f"{out}/organism-{mode}-{name}")
        run = json.load(open(f"{out}/organism-{mode}-{name}/run.json"))
        samples = [json.loads(line) for line in open(f"{out}/organism-{mode}-{name}/samples.jsonl")]
        runs[name] = (scores, samples, time.perf_counter() - t0, run["config"]["batch_size"])
    ref = runs["cpu"][0]
    top = [str(h) for h, _ in ref.ranked()[:10]]
    for name, (scores, samples, seconds, batch) in runs.items():
        same_events = [s["events"] for s in samples] == [s["events"] for s in runs["plain"][1]]
        row = {"mode": mode, "run": name, "batch_size": batch, "seconds": round(seconds, 2),
               "top10_equal_cpu": [str(h) for h, _ in scores.ranked()[:10]] == top,
               "max_abs_score_diff_vs_cpu": float((scores.scores - ref.scores).abs().max()),
               "events_equal_plain_device": same_events}
        results[f"{mode}-{name}"] = row
        print(json.dumps(row), flush=True)
from headatlas.generation import _COMPILE_FAILED
print("compile failures:", _COMPILE_FAILED)
json.dump(results, open(f"{out}/equality.json", "w"), indent=1)
EOF

echo "== (b) detect_speed: $SHAPE $DTYPE on $DEVICE ==" | tee "$OUT/detect_speed.txt"
timeout 300 $PY benchmarks/detect_speed.py --device "$DEVICE" --dtype "$DTYPE" --shape "$SHAPE" \
  --lengths "$LENGTHS" --prompts 2 --batch-sizes "$BATCHES" --grid-lengths "$GRID" --grid-depths 10 \
  --out "$OUT/detect_speed.json" 2>&1 | grep -v "^W[0-9]" | tee -a "$OUT/detect_speed.txt"
if [ "${KV:-0}" = 1 ]; then
  echo "== (c) KV cache at length: llama-3.2-1b shape, $DTYPE on $DEVICE ==" | tee "$OUT/kv_length.txt"
  timeout "${KV_TIME:-240}" $PY benchmarks/kv_cache_memory.py --shape llama-3.2-1b --device "$DEVICE" --dtype "$DTYPE" \
    --layers "${KV_LAYERS:-16}" --lengths "${KV_LENGTHS:-4096,8192,16384,32768}" --repeats "${KV_REPEATS:-3}" \
    --chunk "${KV_CHUNK:-1024}" --out "$OUT/kv_length.jsonl" 2>&1 | tee -a "$OUT/kv_length.txt"
  $PY benchmarks/kv_cache_memory.py --shape llama-3.2-1b --device "$DEVICE" --dtype "$DTYPE" \
    --layers "${KV_LAYERS:-16}" --chunk "${KV_CHUNK:-1024}" --out "$OUT/kv_length.jsonl" --table \
    2>&1 | tee -a "$OUT/kv_length.txt"
fi
echo "== done: $OUT =="
ls -l "$OUT"

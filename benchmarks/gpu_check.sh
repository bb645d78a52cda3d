#!/usr/bin/env bash
# The CUDA paths, end to end, on any CUDA machine in under 8 minutes (`make gpu-check`):
#
#   1. the test suite's CUDA-marked tests (`pytest -m cuda`: AMP train step, Predictor on cuda
#      vs cpu, NCCL eval);
#   2. 50 iterations of AMP training of the `tiny` preset on synthetic shapes, one process under
#      torchrun (NCCL process group), evaluated at the end;
#   3. `eval` on cuda in one plain process and under torchrun (one process per GPU, NCCL): the
#      metrics must be equal;
#   4. `predict` on cuda over the val images;
#   5. benchmarks/latency.py --device cuda: ours vs torchvision's Mask R-CNN at 800 x 1333,
#      absolute ms and ratios.
#
# Every step has its own time limit (470 s in all, under 8 minutes); the script stops at the
# first failure with that step's name. Writes under GPU_CHECK_OUT (default runs/gpu_check):
# the run folders, latency.json and summary.txt (the time of each step and the latency table).
#
#   bash benchmarks/gpu_check.sh            # PYTHON=... to use another interpreter
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
OUT=${GPU_CHECK_OUT:-runs/gpu_check}
DATA="$OUT/data"
SUMMARY="$OUT/summary.txt"

if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check: no CUDA device visible to $PY (torch.cuda.is_available() is False)" >&2
    exit 2
fi
NGPU=$("$PY" -c "import torch; print(torch.cuda.device_count())")
rm -rf "$OUT"
mkdir -p "$OUT"
"$PY" - <<'EOF' | tee "$SUMMARY"
import torch
print(f"gpu_check: torch {torch.__version__}, CUDA {torch.version.cuda}, "
      f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}")
EOF

# step NAME LIMIT_S COMMAND...: run COMMAND with a time limit, record its wall time.
step() {
    local name=$1 limit=$2
    shift 2
    echo "== $name (limit ${limit} s): $*"
    local start=$SECONDS
    if ! timeout --kill-after=10 "$limit" "$@"; then
        echo "gpu_check: FAILED at step '$name' (exit code or timeout after ${limit} s)" >&2
        exit 1
    fi
    echo "$name: $((SECONDS - start)) s" | tee -a "$SUMMARY"
}

TORCHRUN=("$PY" -m torch.distributed.run --standalone)
SET_VAL=(--json "$DATA/annotations/instances_val.json" --images "$DATA/images/val")

step "cuda tests" 120 "$PY" -m pytest tests -m cuda -q -p no:cacheprovider

step "shapes data" 20 "$PY" -m blendmask shapes --out "$DATA" --train 64 --val 16 \
    --image-size 128

# solver.amp is on by default on CUDA; said here so the check does not depend on the preset.
step "train (AMP, NCCL, 50 iterations)" 80 "${TORCHRUN[@]}" --nproc_per_node 1 -m blendmask \
    train --preset tiny --device cuda --out "$OUT/train" --max-iter 50 --seed 0 \
    --train-json "$DATA/annotations/instances_train.json" --train-images "$DATA/images/train" \
    --val-json "$DATA/annotations/instances_val.json" --val-images "$DATA/images/val" \
    --set solver.amp=true
WEIGHTS="$OUT/train/model.pt"

step "eval (cuda, one process)" 40 "$PY" -m blendmask eval --weights "$WEIGHTS" "${SET_VAL[@]}" \
    --device cuda --out "$OUT/eval_1"
step "eval (cuda, torchrun x $NGPU, NCCL)" 50 "${TORCHRUN[@]}" --nproc_per_node "$NGPU" \
    -m blendmask eval --weights "$WEIGHTS" "${SET_VAL[@]}" --device cuda --out "$OUT/eval_n"
step "eval metrics equal" 10 "$PY" - "$OUT/eval_1/metrics.json" "$OUT/eval_n/metrics.json" <<'EOF'
import json, sys
one, many = (json.load(open(p)) for p in sys.argv[1:])
for m in (one, many):
    m.pop("seconds")
if one != many:
    diff = {k: (one.get(k), many.get(k)) for k in one.keys() | many.keys() if one.get(k) != many.get(k)}
    sys.exit(f"distributed eval metrics differ from one process: {diff}")
print(f"eval: bbox_AP {one['bbox_AP']:.4f}, segm_AP {one['segm_AP']:.4f}, equal over processes")
EOF

step "predict (cuda)" 40 "$PY" -m blendmask predict --weights "$WEIGHTS" "$DATA/images/val" \
    --device cuda --out "$OUT/predict"

step "latency (cuda, 800 x 1333)" 110 "$PY" benchmarks/latency.py --device cuda \
    --size 800 1333 --repeats 10 --warmup 3 --presets R_50_1x --peers maskrcnn_resnet50_fpn \
    --json "$OUT/latency.json"
"$PY" - "$OUT/latency.json" <<'EOF' | tee -a "$SUMMARY"
import json, sys
data = json.load(open(sys.argv[1]))
m, s = data["machine"], data["settings"]
print(f"latency on {m.get('gpu', m['device'])}, input {s['size'][0]}x{s['size'][1]}, "
      f"{s['precision']}, median of {s['repeats']} runs (ms):")
for name, per_n in data["models"].items():
    cells = ", ".join(f"{n} detections {1e3 * per_n[str(n)]['median_s']:.1f}" for n in s["detections"])
    print(f"  {name}: {cells}")
for key, value in data["ratios"].items():
    print(f"  {key}: {value:.3f}" if isinstance(value, float) else f"  {key}: n/a")
EOF
echo "gpu_check: all steps passed; summary in $SUMMARY"

#!/usr/bin/env bash
# The oldest torch / torchvision pyproject.toml accepts, and the torch-free runtime install,
# end to end in scratch venvs (`make check-min-torch`; not part of `make test`: it downloads
# torch, several GB on x86_64 Linux, the first time):
#
#   1. a venv with the lowest releases `torch>=X` / `torchvision>=Y` of pyproject.toml allow
#      (the newest patch of X and Y) and the package with its `onnx` extra, installed as a user
#      would (`pip install torch==X.* torchvision==Y.* '.[onnx]'`);
#   2. in it: shapes data, 20 iterations of `train --preset tiny` (no gradient clipping) with an
#      evaluation, a few more with clipping, with every augmentation, and resumed; predict,
#      eval, export to ONNX and TorchScript (each checked against the Predictor on the val
#      images), predict with onnxruntime, explain; panoptic training; a 2-minute demo; and the
#      tests that stand in for the old releases' missing APIs (tests/test_min_torch.py,
#      tests/test_torch_free.py, tests/test_augment.py);
#   3. a second venv with numpy, Pillow and onnxruntime only and the package installed with
#      `--no-deps` (the README's torch-free line): `OnnxSegmenter` runs the exported file.
#
# Stops at the first failure with the step's name. Venvs are kept for the next run
# (MIN_TORCH_VENV, default build/min-torch-venv; RUNTIME_VENV, default build/runtime-venv);
# outputs go to MIN_TORCH_OUT (default runs/min_torch). PYTHON picks the interpreter that
# creates the venvs (default python3).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-python3}
VENV=${MIN_TORCH_VENV:-build/min-torch-venv}
RUNTIME=${RUNTIME_VENV:-build/runtime-venv}
OUT=${MIN_TORCH_OUT:-runs/min_torch}
absolute() { case $1 in /*) echo "$1" ;; *) echo "$ROOT/$1" ;; esac; }
VENV=$(absolute "$VENV")
RUNTIME=$(absolute "$RUNTIME")
OUT=$(absolute "$OUT")

lower_bound() { sed -n "s/^ *\"$1>=\([0-9.]*\)\",\{0,1\}$/\1/p" pyproject.toml; }
TORCH=$(lower_bound torch)
VISION=$(lower_bound torchvision)
if [ -z "$TORCH" ] || [ -z "$VISION" ]; then
    echo "check_min_torch: no \"torch>=...\" / \"torchvision>=...\" line in pyproject.toml" >&2
    exit 2
fi

step() {  # step NAME COMMAND...: run it, or stop naming the step
    local name=$1
    shift
    echo "== $name"
    if ! "$@"; then
        echo "check_min_torch: FAILED at '$name' (torch $TORCH.*, torchvision $VISION.*)" >&2
        exit 1
    fi
}

rm -rf "$OUT"
mkdir -p "$OUT"
test -x "$VENV/bin/python" || "$PY" -m venv "$VENV"
VPY=$VENV/bin/python
BM=$VENV/bin/blendmask
step "install torch==$TORCH.* torchvision==$VISION.* .[onnx]" \
    "$VPY" -m pip install -q "torch==$TORCH.*" "torchvision==$VISION.*" ".[onnx]" pytest pytest-timeout
# A kept venv has an older copy of the package: replace it with this tree's.
step "install this tree" "$VPY" -m pip install -q --no-deps --force-reinstall .
step "versions" "$VPY" -c "
import sys, torch, torchvision
print('torch', torch.__version__, 'torchvision', torchvision.__version__)
sys.exit(not (torch.__version__.startswith('$TORCH.') and torchvision.__version__.startswith('$VISION.')))"

cd "$OUT"  # from here on the package is the installed one, not src/
D=data
step "shapes" "$BM" shapes --out $D --train 8 --val 4 --image-size 128
DATA=(--train-json $D/annotations/instances_train.json --train-images $D/images/train
      --val-json $D/annotations/instances_val.json --val-images $D/images/val)
step "train tiny, 20 iterations, no clipping" \
    "$BM" train --preset tiny "${DATA[@]}" --max-iter 20 --device cpu --out run
step "train tiny with clipping" "$BM" train --preset tiny "${DATA[@]}" --max-iter 4 \
    --device cpu --out run_clip --set solver.clip_grad_norm=1.0
step "train with crops, rot90, flips, colour jitter" "$BM" train --preset tiny "${DATA[@]}" \
    --max-iter 3 --device cpu --out run_aug --set data.crop_size=96 --set data.rot90_train=true \
    --set data.vflip_train=true --set "data.color_jitter=[0.2,0.2,0.2,0.0]" \
    --set "data.scale_jitter=[0.8,1.25]" --set data.cache_images=true
step "resume with more iterations" "$BM" train --preset tiny "${DATA[@]}" --max-iter 24 \
    --device cpu --out run --resume-with-new-settings
step "predict" "$BM" predict --weights run/model.pt $D/images/val --out preds --coco
step "eval" "$BM" eval --weights run/model.pt --json $D/annotations/instances_val.json \
    --images $D/images/val --out eval
step "export onnx" "$BM" export --weights run/model.pt --out model.onnx \
    --check-images $D/images/val/*.png
step "export torchscript" "$BM" export --weights run/model.pt --out model.ts \
    --format torchscript --check-images $D/images/val/*.png
step "predict --onnx" "$BM" predict --onnx model.onnx $D/images/val --out preds_onnx
first=$(ls $D/images/val/*.png | head -n 1)
step "explain" "$BM" explain --weights run/model.pt "$first" --out explain.png
P=panoptic
step "shapes --panoptic" "$BM" shapes --panoptic --out $P --train 6 --val 2 --image-size 128
step "train shapes_panoptic" "$BM" train --preset shapes_panoptic --max-iter 3 --device cpu \
    --out run_panoptic --set data.num_workers=0 \
    --train-json $P/annotations/instances_train.json --train-images $P/images/train \
    --train-panoptic-json $P/annotations/panoptic_train.json \
    --train-panoptic-images $P/annotations/panoptic_train \
    --val-json $P/annotations/instances_val.json --val-images $P/images/val \
    --val-panoptic-json $P/annotations/panoptic_val.json \
    --val-panoptic-images $P/annotations/panoptic_val
step "demo (the shortest budget)" "$BM" demo --minutes 2 --train 16 --val 4 --out demo
cd "$ROOT"
step "tests on torch $TORCH" env OMP_NUM_THREADS=1 "$VPY" -m pytest -q -p no:cacheprovider \
    tests/test_min_torch.py tests/test_torch_free.py tests/test_augment.py

# 3. numpy, Pillow, onnxruntime and the package, nothing else.
test -x "$RUNTIME/bin/python" || "$PY" -m venv "$RUNTIME"
RPY=$RUNTIME/bin/python
step "runtime install (no torch)" "$RPY" -m pip install -q numpy pillow onnxruntime
step "runtime install: the package, --no-deps" \
    "$RPY" -m pip install -q --no-deps --force-reinstall .
cd "$OUT"
step "OnnxSegmenter without torch" "$RPY" - "$first" <<'EOF'
import importlib.util
import json
import sys
from pathlib import Path

for name in ("torch", "torchvision", "yaml", "pycocotools", "matplotlib", "tqdm", "onnx"):
    assert importlib.util.find_spec(name) is None, f"{name} is installed in the runtime venv"
from blendmask.onnx_runtime import OnnxSegmenter

from PIL import Image

image = Path(sys.argv[1])
boxes, scores, labels, masks = OnnxSegmenter("model.onnx")(image)
width, height = Image.open(image).size
assert masks is not None and masks.shape == (len(labels), height, width), masks
rows = [json.loads(line) for line in Path("preds_onnx/predictions.jsonl").read_text().splitlines()]
found = [len(r["detections"]) for r in rows if Path(r["file_name"]).name == image.name]
print(f"OnnxSegmenter: {len(labels)} detections on {image.name}, every score "
      f"(predict --onnx kept {found} above its threshold)")
EOF
echo "check_min_torch: all steps passed on torch $TORCH.*, torchvision $VISION.*"

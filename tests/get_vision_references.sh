#!/usr/bin/env bash
# Copy torchvision's references/detection/*.py into third_party/vision_references/ (git-ignored)
# for tests/test_vision_references.py, from a pytorch/vision checkout or a bare git repository
# of it (its HEAD). Their files are torchvision's: they are never committed here.
#   bash tests/get_vision_references.sh path/to/vision [destination]
set -euo pipefail
vision=${1:?usage: $0 PYTORCH_VISION_CHECKOUT_OR_GIT_DIR [DESTINATION]}
dest=${2:-$(dirname "$0")/../third_party/vision_references}
rm -rf "$dest"
mkdir -p "$dest"
if [[ -d "$vision/references/detection" ]]; then
  cp "$vision"/references/detection/*.py "$dest"/
elif git --git-dir="$vision" rev-parse --verify -q HEAD >/dev/null 2>&1; then
  git --git-dir="$vision" ls-tree --name-only HEAD references/detection/ | grep '\.py$' |
    while read -r file; do
      git --git-dir="$vision" show "HEAD:$file" >"$dest/$(basename "$file")"
    done
else
  echo "$vision: neither a checkout with references/detection/ nor a git directory" >&2
  exit 2
fi
for needed in engine.py coco_eval.py coco_utils.py utils.py; do
  [[ -f "$dest/$needed" ]] || { echo "$vision: no references/detection/$needed" >&2; exit 2; }
done
echo "wrote $(ls "$dest" | wc -l) files to $dest"

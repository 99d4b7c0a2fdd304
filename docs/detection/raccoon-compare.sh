#!/usr/bin/env bash
# Issue 22's target: detect-cpu on the raccoon photos, 20 minutes a run, a backbone pretrained with this package
# against random initialisation, 3 seeds each. The two runs of a seed (pretrained, random) run side by side, one
# core and one loader worker each, so both see the same machine at the same moments (other load slows both alike);
# about 20 + 3 x 25 minutes on a 2-core CPU. Results land in docs/detection/raccoon-20m/ (no checkpoints).
# Usage: [SEEDS="0 1 2"] bash docs/detection/raccoon-compare.sh [--skip-pretrain]
set -euo pipefail
D=../shared/data/cifar10
OUT=docs/detection/raccoon-20m
mkdir -p "$OUT"
# The backbone: the 20-minute CPU recipe on all of CIFAR-10 (ResNet-18, ImageNet stem), alone on the machine.
if [ "${1:-}" != --skip-pretrain ]; then
  barlowtwins pretrain --recipe cifar10-cpu --time-budget 20m --data "$D/cifar10-train-{000000..000009}.tar" \
    --eval-data "$D/cifar10-test-{000000..000001}.tar" --out runs/raccoon-backbone --set monitor.picture_every=0
fi
detect() {  # detect INIT SEED
  local backbone=(--checkpoint runs/raccoon-backbone)
  [ "$1" = random ] && backbone=(--checkpoint random --arch resnet18)
  OMP_NUM_THREADS=1 barlowtwins detect --recipe detect-cpu --data ../shared/data/raccoon "${backbone[@]}" \
    --time-budget 20m --set seed="$2" --set workers=1 --out "runs/raccoon-$1-$2" > "runs/raccoon-$1-$2.log" 2>&1
  mkdir -p "$OUT/$1-$2"
  cp "runs/raccoon-$1-$2/eval/detection.json" "runs/raccoon-$1-$2/config.yaml" "$OUT/$1-$2/"
}
for seed in ${SEEDS:-0 1 2}; do
  detect pretrained "$seed" &
  detect random "$seed" &
  wait
done
python docs/detection/raccoon-summary.py "$OUT"

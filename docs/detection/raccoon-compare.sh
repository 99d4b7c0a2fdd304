#!/usr/bin/env bash
# Issue 22's target: detect-cpu on the raccoon photos, 20 minutes a run, a backbone pretrained with this package
# against random initialisation, 3 seeds each (about 2.5 hours of an otherwise idle 2-core CPU: run nothing else,
# the budget counts wall-clock steps). Results land in docs/detection/raccoon-20m/ (no checkpoints).
set -euo pipefail
D=../shared/data/cifar10
OUT=docs/detection/raccoon-20m
mkdir -p "$OUT"
# The backbone: the 20-minute CPU recipe on all of CIFAR-10 (ResNet-18, ImageNet stem).
barlowtwins pretrain --recipe cifar10-cpu --time-budget 20m --data "$D/cifar10-train-{000000..000009}.tar" \
  --eval-data "$D/cifar10-test-{000000..000001}.tar" --out runs/raccoon-backbone --set monitor.picture_every=0
for seed in 0 1 2; do
  for init in pretrained random; do
    backbone=(--checkpoint runs/raccoon-backbone)
    [ "$init" = random ] && backbone=(--checkpoint random --arch resnet18)
    barlowtwins detect --recipe detect-cpu --data ../shared/data/raccoon "${backbone[@]}" \
      --time-budget 20m --set seed=$seed --out "runs/raccoon-$init-$seed"
    mkdir -p "$OUT/$init-$seed"
    cp runs/raccoon-$init-$seed/eval/detection.json runs/raccoon-$init-$seed/config.yaml "$OUT/$init-$seed/"
  done
done

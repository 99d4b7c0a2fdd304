#!/usr/bin/env bash
# Does the whole-batch crop's bilinear (roi_align) matter against the paper's bicubic (PIL, per sample) at 32 px?
# The cifar10-cpu recipe for a fixed 2 epochs (780 steps), fp32, each crop path and seed; kNN on the test set.
# Seed 0: out dirs batch/ and sample/; further seeds: batch-seedN/ and sample-seedN/ (pass the seeds as arguments).
set -euo pipefail
D=../shared/data/cifar10
for seed in "${@:-0}"; do
  for crops in batch sample; do
    out=docs/fullsize-crops/$crops$([ "$seed" = 0 ] || echo "-seed$seed")
    barlowtwins pretrain --recipe cifar10-cpu --data "$D/cifar10-train-{000000..000009}.tar" \
      --eval-data "$D/cifar10-test-{000000..000001}.tar" --epochs 2 --precision fp32 --seed "$seed" \
      --set data.crops=$crops --set monitor.picture_every=0 --out "$out" 2>&1 | tr '\r' '\n' | grep -v "█\|it/s\]\|s/step" > "$out.log"
  done
done

#!/bin/bash
# Regenerates the "Learned k-means layer" section of docs/learning.md: three training runs of the scaled-down setting
# (d = 8, k = 6, n = 128, 2,000 steps of 32 tasks, Adam 0.01, λ = 10), their training curves, and the evaluation
# against Lloyd. Run from the repository root; it writes runs/learned/ (checkpoints) and docs/learning/.
set -euo pipefail
export OMP_NUM_THREADS=1
mkdir -p runs/learned
for spec in "lloyd 1" "random 1" "lloyd 10"; do
  set -- $spec
  /usr/bin/time -f "$1-g$2 %e s" -a -o runs/learned/times.txt \
    kmeans-transformer train --output runs/learned/$1-g$2 --init-from $1 --gamma $2 --num-clusters 6 --point-dim 8 \
      --num-points 128 --steps 2000 --batch-size 32 --learning-rate 0.01 --loss-inverse-temperature 10 --seed 0 \
      --overwrite --no-progress
done
python docs/learning/plot_training.py runs/learned/lloyd-g1="init_from=lloyd, γ=1" \
  runs/learned/random-g1="init_from=random, γ=1" runs/learned/lloyd-g10="init_from=lloyd, γ=10" \
  --output docs/learning/training.png > docs/learning/steps_to_loss.md
for run in lloyd-g1 random-g1 lloyd-g10; do
  kmeans-transformer evaluate runs/learned/$run --output docs/learning/evaluation-$run --num-tasks 320 --overwrite
done

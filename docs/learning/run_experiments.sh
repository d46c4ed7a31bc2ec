#!/bin/bash
# Regenerates the "Learned k-means layer" section of docs/learning.md: the training runs of the scaled-down setting
# (d = 8, k = 6, n = 128, 2,000 steps of 32 tasks, Adam 0.01, λ = 10), their curves, and the evaluations against
# Lloyd. Run from the repository root; checkpoints go to runs/learned/, tables and figures to docs/learning/.
set -euo pipefail
export OMP_NUM_THREADS=1
mkdir -p runs/learned
train() {  # name init gamma seed
  /usr/bin/time -f "$1 %e s" -a -o runs/learned/times.txt \
    kmeans-transformer train --output runs/learned/$1 --init-from $2 --gamma $3 --seed $4 --num-clusters 6 \
      --point-dim 8 --num-points 128 --steps 2000 --batch-size 32 --learning-rate 0.01 --loss-inverse-temperature 10 \
      --overwrite --no-progress
}
train lloyd-g1 lloyd 1 0
train random-g1 random 1 0
train lloyd-g10 lloyd 10 0
train lloyd-g10-s1 lloyd 10 1
train lloyd-g10-s2 lloyd 10 2
/usr/bin/time -f "lloyd-g10-l100 %e s" -a -o runs/learned/times.txt \
  kmeans-transformer train --output runs/learned/lloyd-g10-l100 --init-from lloyd --gamma 10 --seed 0 \
    --num-clusters 6 --point-dim 8 --num-points 128 --steps 2000 --batch-size 32 --learning-rate 0.01 \
    --loss-inverse-temperature 100 --overwrite --no-progress
python -c "
from kmeans_transformer.learned import build_learned_model
build_learned_model(6, 8, inverse_temperature=10.0).save_pretrained('runs/learned/untrained-g10')
"
# one Lloyd iteration on 256 tasks of the training distribution: its loss and mean log J (the dashed lines)
lloyd=$(python -c "
import torch
from kmeans_transformer.learned import kmeans_objective, lloyd_trajectory, soft_kmeans_objective
from kmeans_transformer.tasks import TaskDistribution
batch = TaskDistribution(128, 6, 8).batch(12345, 0, 256)
points, start = torch.tensor(batch['points']), torch.tensor(batch['initial_centroids'])
after = lloyd_trajectory(points, start, 1)[1]
print(f'{soft_kmeans_objective(points, after, 10.0).mean():.2f} {kmeans_objective(points, after).log().mean():.3f}')
")
python docs/learning/plot_training.py runs/learned/lloyd-g1="init_from=lloyd, γ=1" \
  runs/learned/random-g1="init_from=random, γ=1" runs/learned/lloyd-g10="init_from=lloyd, γ=10" \
  --levels 24,22,21.4,20,19,18.5 --lloyd $lloyd --output docs/learning/training.png > docs/learning/steps_to_loss.md
evaluate() {  # output, then the checkpoints and options
  out=$1; shift
  kmeans-transformer evaluate "$@" --output docs/learning/$out --overwrite --no-progress
}
for run in lloyd-g1 random-g1 lloyd-g10 untrained-g10 lloyd-g10-l100; do
  evaluate main-$run runs/learned/$run --num-points 128 --families normal --num-tasks 320
done
evaluate tokens-lloyd-g1 runs/learned/lloyd-g1 --loop tokens --num-points 128 --families normal --num-tasks 320
kmeans-transformer train --output runs/learned/lloyd-g10-t3 --init-from lloyd --gamma 10 --num-layers 3 --seed 0 \
  --num-clusters 6 --point-dim 8 --num-points 128 --steps 600 --batch-size 32 --learning-rate 0.01 \
  --loss-inverse-temperature 10 --card-tasks 0 --overwrite --no-progress
evaluate tokens-lloyd-g10-t3 runs/learned/lloyd-g10-t3 --loop tokens --starts random --num-points 128 \
  --families normal --num-tasks 320
evaluate seeds-lloyd-g10 runs/learned/lloyd-g10 runs/learned/lloyd-g10-s1 runs/learned/lloyd-g10-s2 \
  --num-points 128 --families normal --num-tasks 320
# every n and family, from the first k shuffled points (the three starts take three times as long)
evaluate grid-lloyd-g10 runs/learned/lloyd-g10 --starts random --num-tasks 320

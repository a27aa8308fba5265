#!/usr/bin/env bash
# Grid sweeps for tuning the small presets on a lent GPU machine (many small runs
# share the GPU, one process each), then the best run of each task thinned for shipping.
# Usage: benchmarks/device_sweep.sh OUTDIR MAX_TIME_S
# Expects transformer_lens importable (wheels carried, see docs/REPRODUCTION.md).
set -u
out=${1:-sweeps}; t=${2:-420}
common="train.device=cuda train.autocast=off train.max_time_s=$t train.max_steps=40000 train.stop_iid_threshold=none train.eval_every=250 train.log_per_decade=10 model.d_model=64"
sweep() { python3 -m grokscope.cli sweep "$@"; }
sweep --preset composition-small --out "$out/composition" --jobs 12 \
  --grid task.phi=5.4,7.2,9 --grid train.weight_decay=0.1,0.3 --grid model.d_mlp=256,512 \
  $common task.n_entities=50 task.test_fraction=0.05 model.tie_embeddings=false > "$out/composition.log" 2>&1 &
sweep --preset comparison-small --out "$out/comparison" --jobs 2 \
  --grid train.weight_decay=0.1,0.3 \
  $common task.n_entities=50 task.n_attributes=10 task.n_values=10 task.phi=18 model.d_mlp=512 model.init_range=0.02 model.tie_embeddings=false > "$out/comparison.log" 2>&1 &
wait
python3 benchmarks/pick_best.py "$out/composition" 14 > "$out/pick-composition.txt"
python3 benchmarks/pick_best.py "$out/comparison" 14 --ood > "$out/pick-comparison.txt"

#!/usr/bin/env bash
# Session-3 GPU sweep: does comparison show delayed ID generalisation (train >= 0.99
# first with test ID <= 0.6, then test ID >= 0.95) once the model is large relative
# to its data (A, B), or once atomic facts are not oversampled (C)? Plus one
# medium-scale composition run at the paper's data size (D).
# Usage: benchmarks/device_comparison_gap.sh OUTDIR MAX_TIME_S
# Expects transformer_lens importable (wheels carried, see docs/REPRODUCTION.md).
set -u
out=${1:-sweeps}; t=${2:-460}
. "$(dirname "$0")/device_common.sh"
small="task.n_entities=50 task.n_attributes=5"
sweep --preset comparison-small --out "$out/A-50e-d128" --jobs 6 \
  --grid task.phi=3.6,7.2,12.6 --grid train.weight_decay=0.1,0.3 \
  $common $small model.d_model=128 model.d_mlp=512 > "$out/A.log" 2>&1 &
sweep --preset comparison-small --out "$out/B-50e-d256" --jobs 4 \
  --grid task.phi=3.6,7.2 --grid train.weight_decay=0.1,0.3 \
  $common $small model.d_model=256 model.d_mlp=1024 > "$out/B.log" 2>&1 &
sweep --preset comparison-small --out "$out/C-100e-d128" --jobs 4 \
  --grid train.atomic_fraction=none,0.1 --grid train.weight_decay=0.3,1.0 \
  $common model.d_model=128 model.d_mlp=512 > "$out/C.log" 2>&1 &
python3 -m grokscope.cli train --preset composition-paper --out "$out/D-medium/composition-2000e-phi18-8L-d256" -q \
  task.phi=18 model.d_model=256 model.n_heads=8 model.d_mlp=1024 train.lr=1e-3 train.warmup_steps=1000 \
  train.eval_every=1000 train.dense_every=5000 train.dense_until=20000 train.log_per_decade=3 \
  train.device=cuda train.max_time_s=$t > "$out/D.log" 2>&1 &
wait

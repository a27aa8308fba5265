#!/usr/bin/env bash
# Session-3 GPU sweep, second part: larger initialisation scale (model.init_range),
# the "Omnigrok" lever (Liu et al. 2023): a large-norm start memorises first and
# weight decay then pulls the weights down to the generalising solution.
# Usage: benchmarks/device_comparison_init.sh OUTDIR MAX_TIME_S
set -u
out=${1:-sweeps}; t=${2:-460}
. "$(dirname "$0")/device_common.sh"
# E: the shipped comparison setting (100 entities, 10 attributes, 5 values, 4 x 64).
sweep --preset comparison-small --out "$out/E-100e-d64" --jobs 6 \
  --grid model.init_range=0.3,0.6,1.0 --grid task.phi=7.2,18 \
  $common > "$out/E.log" 2>&1 &
sweep --preset comparison-small --out "$out/E-100e-d64-wd3" --jobs 3 \
  --grid model.init_range=0.3,0.6,1.0 \
  $common train.weight_decay=3.0 > "$out/E3.log" 2>&1 &
# F: smaller knowledge base, wider model.
sweep --preset comparison-small --out "$out/F-50e-d128" --jobs 6 \
  --grid model.init_range=0.3,0.6 --grid task.phi=3.6,7.2,12.6 \
  $common task.n_entities=50 task.n_attributes=5 model.d_model=128 model.d_mlp=512 train.weight_decay=1.0 > "$out/F.log" 2>&1 &
wait

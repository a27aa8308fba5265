#!/usr/bin/env bash
# Session-3 GPU sweep, third part: around the best point of device_comparison_init.sh
# (50 entities, 5 attributes, 4 x 128, wd 1.0, phi 7.2, init_range 0.6): larger init,
# a second seed, phi 5.4, weight decay, and the 100-entity knowledge base at d_model 128.
# Usage: benchmarks/device_comparison_init2.sh OUTDIR MAX_TIME_S
set -u
out=${1:-sweeps}; t=${2:-400}
. "$(dirname "$0")/device_common.sh"
small="task.n_entities=50 task.n_attributes=5 model.d_model=128 model.d_mlp=512"
sweep --preset comparison-small --out "$out/G-50e-d128-seeds" --jobs 6 \
  --grid model.init_range=0.6,0.8,1.0 --grid seed=0,1 \
  $common $small task.phi=7.2 train.weight_decay=1.0 > "$out/G.log" 2>&1 &
sweep --preset comparison-small --out "$out/H-50e-d128-phi5.4" --jobs 2 \
  --grid model.init_range=0.6,1.0 \
  $common $small task.phi=5.4 train.weight_decay=1.0 > "$out/H.log" 2>&1 &
sweep --preset comparison-small --out "$out/I-100e-d128" --jobs 4 \
  --grid model.init_range=0.6,1.0 --grid task.phi=7.2,12.6 \
  $common model.d_model=128 model.d_mlp=512 train.weight_decay=1.0 > "$out/I.log" 2>&1 &
sweep --preset comparison-small --out "$out/J-50e-d128-wd" --jobs 2 \
  --grid train.weight_decay=0.3,3.0 \
  $common $small task.phi=7.2 model.init_range=0.8 > "$out/J.log" 2>&1 &
wait

# Sourced by benchmarks/device_comparison_*.sh (session-3 GPU sweeps); needs $t (seconds).
# Every run: fp32 on the GPU, a fixed time budget, no early stop. BASE pins the
# comparison-small preset as it was when these sweeps ran (100 entities, 10 attributes,
# phi 18, GPT-2 init scale, wd 1.0, untied), so the scripts re-run the same points although
# the preset has moved on; the scripts' own settings and grid axes override it.
BASE="task.n_entities=100 task.n_attributes=10 task.phi=18 model.init_range=0.02 train.weight_decay=1.0 model.tie_embeddings=false"
common="$BASE train.device=cuda train.autocast=off train.max_time_s=$t train.max_steps=60000 train.stop_iid_threshold=none train.eval_every=250 train.log_per_decade=4"
sweep() { python3 -m grokscope.cli sweep "$@"; }

"""Draw the curves behind docs/REPRODUCTION.md as PNG files in docs/figures/.

Each figure compares the metrics.jsonl of runs that the commands in REPRODUCTION.md
wrote (run directories are not in the repository, only the shipped runs are). A
figure whose runs are missing is skipped with a note; the shipped runs are always
there.

    python docs/figures.py [--runs runs] [--out docs/figures] [--only NAME ...]

Needs plotly's static export (kaleido) and a Chromium (``apt-get install chromium``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ID = ("train_inferred", "test_inferred_iid")
ID_OOD = ("train_inferred", "test_inferred_iid", "test_inferred_ood")

# figure name -> (title, {legend label: run directory relative to --runs or the repo}, splits)
FIGURES: dict[str, tuple[str, dict[str, str], tuple[str, ...]]] = {
    "claim1-composition-grokking": (
        "(1) composition groks: the shipped run, tied (train >= 0.99 at 6,500, test ID 0.95 at 14,750)",
        {"composition-small": "checkpoints/composition-small"}, ID_OOD),
    "claim1b-comparison-grokking": (
        "(1) comparison groks with init_range 1.0 (50 entities, 4 x 64, this CPU)",
        {"phi 6.3, wd 1.5 (shipped, tied)": "checkpoints/comparison-small",
         "phi 6.3, wd 1.5, seed 1": "s3cpu/cmp-50e-d64-phi6.3-init1.0-wd1.5-seed1",
         "phi 5.4, wd 1.5": "s3cpu/cmp-50e-d64-phi5.4-init1.0-wd1.5",
         "phi 7.2, wd 1.0": "s3cpu/cmp-50e-d64-phi7.2-init1.0"}, ID),
    "claim2-phi": (
        "(2) larger phi groks faster (composition-small, wd 0.1, seeds 0 and 1)",
        {"phi 5.4 seed 0": "gpu/sw3/composition/phi=5.4_weight_decay=0.1_d_mlp=512",
         "phi 7.2 seed 0": "checkpoints/composition-small",
         "phi 7.2 seed 1": "phi-seeds/phi=7.2_seed=1",
         "phi 9 seed 0": "gpu/sw3/composition/phi=9_weight_decay=0.1_d_mlp=512",
         "phi 9 seed 1": "phi-seeds/phi=9_seed=1",
         "phi 12.6 seed 0": "phi-seeds/phi=12.6_seed=0",
         "phi 12.6 seed 1": "phi-seeds/phi=12.6_seed=1"}, ID),
    "claim3-entities": (
        "(3) entities at phi 9, models 4 x 128 and 4 x 64",
        {"30 entities, d 128": "sweeps/entities-d128/n_entities=30",
         "50 entities, d 128": "sweeps/entities-d128/n_entities=50",
         "80 entities, d 128": "sweeps/entities-d128/n_entities=80",
         "30 entities, d 64": "sweeps/entities/n_entities=30",
         "50 entities, d 64": "gpu/sw3/composition/phi=9_weight_decay=0.1_d_mlp=512",
         "80 entities, d 64": "sweeps/entities/n_entities=80"}, ID),
    "claim4-ood": (
        "(4) OOD: composition fails, comparison generalizes (the shipped runs)",
        {"composition-small": "checkpoints/composition-small",
         "comparison-small": "checkpoints/comparison-small"}, ID_OOD),
    "claim5-sharing": (
        "(5) composition at phi 12.6, wd 0.3, 8 layers: 4 shared blocks vs 8 blocks",
        {"8 layers, 4 shared blocks": "s2/comp-8Ls-phi12.6",
         "8 layers, unshared": "s2/comp-8L-phi12.6"}, ID_OOD),
    "claim6-depth": (
        "(6) depth at phi 9 (composition-small)",
        {"2 layers": "sweeps/depth/n_layers=2",
         "4 layers": "gpu/sw3/composition/phi=9_weight_decay=0.1_d_mlp=512",
         "6 layers": "sweeps/depth/n_layers=6"}, ID),
    "claim7-weight-decay": (
        "(7) weight decay at phi 7.2 (composition-small)",
        {"wd 0.1": "gpu/sw3/composition/phi=7.2_weight_decay=0.1_d_mlp=512",
         "wd 0.3": "gpu/sw3/composition/phi=7.2_weight_decay=0.3_d_mlp=512"}, ID),
    "ttg-composition": (
        "time to grok, composition-small tied: plain vs Grokfast filter (alpha 0.98) vs dropout vs lr 3e-3",
        {"plain seed 0 (shipped)": "checkpoints/composition-small",
         "plain seed 1": "ttg/comp-plain-s1",
         "filter lambda 0.5 seed 0": "ttg/comp-filter-l0.5-s0",
         "filter lambda 0.5 seed 1": "ttg/comp-filter-l0.5-s1",
         "filter lambda 2 seed 0": "ttg/comp-filter-s0",
         "dropout 0.1 seed 0": "ttg/comp-dropout-s0",
         "filter lambda 2 from step 6,500, seed 0": "ttg/comp-filter-l2-from6500-s0",
         "filter lambda 2 from step 5,000, seed 1": "ttg/comp-filter-l2-from5000-s1",
         "lr 3e-3 seed 0": "ttg/comp-lr3e-3-s0"}, ID),
    "ttg-modular": (
        "time to grok, modular-small: plain vs Grokfast filter (alpha 0.98), from the start or from step 1,000",
        {"plain seed 0 (shipped)": "checkpoints/modular-small",
         "plain seed 1": "ttg/mod-plain-s1",
         "filter lambda 0.5 seed 0": "ttg/mod-filter-l0.5-s0",
         "filter lambda 0.5 seed 1": "ttg/mod-filter-l0.5-s1",
         "filter lambda 2 seed 0": "ttg/mod-filter-s0",
         "filter lambda 2 from step 1,000, seed 0": "ttg/mod-filter-l2-from1000-s0",
         "filter lambda 5 from step 1,000, seed 0": "ttg/mod-filter-l5-from1000-s0",
         "filter lambda 2 from step 1,200, seed 1": "ttg/mod-filter-l2-from1200-s1"}, ID),
    "ttg-comparison": (
        "time to grok, comparison-small tied: plain vs Grokfast filter (alpha 0.98)",
        {"plain seed 0": "ttg/cmp-tied-s0",
         "plain seed 1": "ttg/cmp-tied-s1",
         "filter seed 0": "ttg/cmp-tied-filter-l0.5-s0",
         "filter seed 1": "ttg/cmp-tied-filter-l0.5-s1",
         "filter lambda 2 from step 1,000, seed 0": "ttg/cmp-tied-filter-l2-from1000-s0"}, ID),
}


def _metrics(path: Path) -> list[dict]:
    from grokscope.runs.run import Run

    return Run.open(path).metrics()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=Path, default=REPO / "runs", help="where the runs of REPRODUCTION.md live")
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "figures")
    ap.add_argument("--only", nargs="*", default=None, metavar="NAME", help="draw only these figures")
    args = ap.parse_args(argv)

    from grokscope import plots

    args.out.mkdir(parents=True, exist_ok=True)
    unknown = sorted(set(args.only or ()) - set(FIGURES))
    if unknown:
        ap.error(f"unknown figure(s) {', '.join(unknown)}; known: {', '.join(FIGURES)}")
    for name, (title, runs, splits) in FIGURES.items():
        if args.only is not None and name not in args.only:
            continue
        found, missing = {}, []
        for label, rel in runs.items():
            path = REPO / rel if rel.startswith("checkpoints/") else args.runs / rel
            if (path / "metrics.jsonl").is_file():
                found[label] = _metrics(path)
            else:
                missing.append(str(path))
        if missing:
            print(f"skip {name}: missing {', '.join(missing)}", file=sys.stderr)
            continue
        fig = plots.compare_runs(found, splits, title=title)
        fig.update_layout(width=1200 if len(splits) == 3 else 900, height=420 if len(found) <= 7 else 520, title_font_size=14,
                          legend=dict(font_size=11, tracegroupgap=0))
        fig.write_image(args.out / f"{name}.png", scale=1)
        print(args.out / f"{name}.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

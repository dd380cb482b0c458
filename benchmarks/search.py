"""Which truncation search earns its keep? Probe, similarity and halving judged on exhaustive studies.

Two generated tasks: the demo's phantoms (nodules of 3.5-6.5 px) and phantoms with larger, fainter
nodules (``--task large``). For each, one study with ``--search exhaustive`` (EfficientNet-Lite0,
ImageNet weights, 128 px, avg+max pooling, 5% and 100% of the 300 training images, 3 seeds, 120
steps at batch 8 with validation every 15, the logistic-regression probe, no stage 2): every block
end finetuned at every seed, plus the similarity search's short finetunes. Its report and
``search.csv`` judge every search on those runs (``tlmic_feats.study.report.search``). The study is
the command line's::

    tlmic study --data DATA --backbone efficientnet_lite0 --weights imagenet --input-size 128 \\
        --pool avgmax --fractions 0.05,1 --seeds 3 --search exhaustive --top-blocks 1 --top-units 0 \\
        --baselines none --no-scratch --probe-models logreg --steps 120 --eval-every 15 \\
        --batch-size 8 --lr 1e-3 --out OUT

    python benchmarks/search.py [--task demo|large|both] [--root DIR] [--top-blocks 1,2] [--figure PNG]

Resumable: a rerun skips finished runs and prints the tables again (``--top-blocks``: the guided
searches' numbers of block ends, each judged on the same runs).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

TASKS = {
    "demo": {"nodule_px": (3.5, 6.5)},  # the demo's phantoms (tlmic_feats.demo.DEMO_PHANTOM)
    "large": {"nodule_px": (8.0, 14.0), "nodule_contrast": (0.08, 0.14)},
}


def study_config(data: Path, out: Path):
    from tlmic_feats.data.readers import DataConfig
    from tlmic_feats.finetune.training import TrainingConfig
    from tlmic_feats.study.config import StudyConfig

    return StudyConfig(
        data=DataConfig(str(data), format="imagefolder"),
        backbone="efficientnet_lite0",
        weights="imagenet",
        fractions=(0.05, 1.0),
        seeds=3,
        out=str(out / "study"),
        top_blocks=1,
        top_units=0,
        search="exhaustive",
        baselines=(),
        scratch=False,
        probe_models=("logreg",),
        training=TrainingConfig(steps=120, eval_every=15, batch_size=8, lr=1e-3),
        pool="avgmax",
        input_size=128,
        store=str(out / "store.zarr"),
    )


def main() -> None:
    from dataclasses import replace

    from tlmic_feats.backbones.registry import build_backbone
    from tlmic_feats.data.phantom import make_phantom_dataset
    from tlmic_feats.data.readers import load_manifest
    from tlmic_feats.demo import DEMO_PHANTOM
    from tlmic_feats.study.report.search import judge_searches
    from tlmic_feats.study.run import run_study

    ap = argparse.ArgumentParser()
    ap.add_argument("--task", choices=[*TASKS, "both"], default="both")
    ap.add_argument("--root", default="cache/search-benchmark")
    ap.add_argument("--top-blocks", default="1,2", help="the guided searches' block ends, each judged on the same runs")
    ap.add_argument("--figure", default="", help="write the regret-vs-compute figure here (PNG)")
    args = ap.parse_args()
    table = []
    for task in TASKS if args.task == "both" else [args.task]:
        out = Path(args.root) / task
        data = make_phantom_dataset(out / "data", replace(DEMO_PHANTOM, **TASKS[task]))
        config = study_config(data, out)
        result = run_study(config, progress=False)
        state = json.loads((result.out / "study.json").read_text())
        backbone = build_backbone(config.backbone, config.weights, input_size=config.input_size)
        kind = load_manifest(config.data).label_kind
        for k in (int(v) for v in args.top_blocks.split(",")):
            judged = judge_searches(result.out, config, backbone, result.rows, state, kind, top_blocks=k)
            for fraction, rows in judged.items():
                by = {(r["search"], r["metric"]): r for r in rows}
                for search in ("probe", "similarity", "halving", "exhaustive"):
                    a, p = by[(search, "auroc")], by[(search, "auprc")]
                    table.append(dict(task=task, fraction=fraction, top=k, search=search, auroc=a, auprc=p))
    print(
        "| task | fraction | top | search | finetuned | chosen (best) | regret AUROC [95% CI] | regret AUPRC [95% CI] "
        "| rho AUROC | tau AUROC | seconds | exhaustive / search |"
    )
    print("| --- | ---: | ---: | --- | --- | --- | --- | --- | ---: | ---: | ---: | ---: |")
    for t in table:
        a, p = t["auroc"], t["auprc"]
        print(
            f"| {t['task']} | {t['fraction']:g} | {t['top']} | {t['search']} | {a['finetuned']} | {a['chosen']} "
            f"({a['best']}) | {_regret(a)} | {_regret(p)} | {_num(a['rho'])} | {_num(a['tau'])} | {a['seconds']:.0f} "
            f"| {a['saving']:.2f}x |"
        )
    print("\nPer search and top, over the tasks and fractions: mean regret, compute share of exhaustive\n")
    print("| top | search | mean regret AUROC | mean regret AUPRC | seconds | share of exhaustive | settings |")
    print("| ---: | --- | ---: | ---: | ---: | ---: | ---: |")
    for k in sorted({t["top"] for t in table}):
        for search in ("probe", "similarity", "halving", "exhaustive"):
            rows = [t for t in table if t["top"] == k and t["search"] == search]
            if not rows:
                continue
            seconds = sum(t["auroc"]["seconds"] for t in rows)
            exhaustive = sum(t["auroc"]["exhaustive_seconds"] for t in rows)
            print(
                f"| {k} | {search} | {_mean([t['auroc']['regret'] for t in rows]):+.3f} | "
                f"{_mean([t['auprc']['regret'] for t in rows]):+.3f} | {seconds:.0f} | {seconds / exhaustive:.2f} | "
                f"{len(rows)} |"
            )
    if args.figure:
        plot(table, Path(args.figure))


def _regret(r: dict) -> str:
    return f"{r['regret']:+.3f} [{r['regret_lo']:+.3f}, {r['regret_hi']:+.3f}]"


def _num(v) -> str:
    import math

    return "n/a" if v == "" or not math.isfinite(v) else f"{v:+.2f}"


def _mean(values) -> float:
    return sum(values) / len(values)


def plot(table: list[dict], path: Path) -> None:
    """Regret (AUROC, with its 95% interval) against compute (share of the exhaustive search's
    seconds), one panel per task and fraction, one marker per search, top 1 block end."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [t for t in table if t["top"] == 1]
    panels = sorted({(t["task"], t["fraction"]) for t in rows}, key=lambda p: (list(TASKS).index(p[0]), p[1]))
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.2), sharey=True, squeeze=False)
    styles = {"probe": "o", "similarity": "s", "halving": "^", "exhaustive": "D"}
    for ax, (task, fraction) in zip(axes[0], panels, strict=True):
        for t in rows:
            if (t["task"], t["fraction"]) != (task, fraction):
                continue
            a = t["auroc"]
            x = a["seconds"] / a["exhaustive_seconds"]
            ax.errorbar(x, a["regret"], yerr=[[a["regret"] - a["regret_lo"]], [a["regret_hi"] - a["regret"]]],
                        fmt=styles[t["search"]], capsize=3, label=t["search"])  # fmt: skip
        ax.axhline(0, color="k", lw=0.8)
        ax.set_title(f"{task} phantoms, {fraction:g} of train", fontsize=9)
        ax.set_xlabel("compute / exhaustive's")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("regret, test AUROC")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

"""Benchmark: which finetuning recipe learns in the data-poor regime, measured on the demo's phantom.

Recipe variants (learning rate, batch size against subset size, head vs backbone learning rate,
LP-FT head initialisation from the fitted logistic-regression probe, augmentation strength), each
run for full finetuning and for a truncated network, at several training fractions and seeds, with
the same step budget. Every run validates every ``--eval-every`` steps and never stops early, so
the validation curve also shows how many steps learning takes (the budget's ``min_steps`` floor).

Prints and writes (``--out``, default ``cache/bench/recipe``) a markdown table: variant x arm x
fraction -> best validation AUROC (mean over seeds), the step it was reached at, test AUROC, and
seconds per run; plus the mean validation AUROC curve per batch size. Selection reads validation
only; test AUROC is shown for information.

    python benchmarks/finetune_recipe.py [--fractions 0.05,0.1,1.0] [--seeds 2] [--steps 150]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

STRONG = dict(scale=(0.5, 1.0), rotate_degrees=15.0, translate=0.1, brightness=0.2, contrast=0.2)
VARIANTS = {
    "paper: lr 1e-4, batch 32": dict(lr=1e-4, batch_size=32),
    "lr 1e-3, batch 32": dict(lr=1e-3, batch_size=32),
    "lr 1e-3, batch 8": dict(lr=1e-3, batch_size=8),
    "lr 1e-3, batch 8, backbone lr x0.1": dict(lr=1e-3, batch_size=8, backbone_lr_mult=0.1),
    "lr 1e-3, batch 8, LP-FT head": dict(lr=1e-3, batch_size=8, head_init="probe"),
    "lr 1e-3, batch 8, no augmentation": dict(lr=1e-3, batch_size=8, augment=None),
    "lr 1e-3, batch 8, strong augmentation": dict(lr=1e-3, batch_size=8, augment="strong"),
}


def main() -> None:
    from tlmic_feats.runtime.options import from_flat
    from tlmic_feats.data.phantom import make_phantom_dataset
    from tlmic_feats.data.readers import DataConfig
    from tlmic_feats.demo import DEMO_BACKBONE, DEMO_INPUT_SIZE, DEMO_PHANTOM, DEMO_POOL
    from tlmic_feats.features.config import ExtractConfig
    from tlmic_feats.features.extract import extract_features
    from tlmic_feats.finetune.augment import AugmentConfig
    from tlmic_feats.finetune.config import FinetuneConfig
    from tlmic_feats.finetune.trainer import run_finetune
    from tlmic_feats.probes.config import ProbeConfig
    from tlmic_feats.probes.grid import run_probes

    ap = argparse.ArgumentParser()
    ap.add_argument("--fractions", default="0.05,0.1,1.0")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--eval-every", type=int, default=10)
    ap.add_argument("--truncate", default="5", help="the truncated arm's cut point")
    ap.add_argument("--variants", default="", help="comma-separated indices into the variant list (default: all)")
    ap.add_argument("--out", default="cache/bench/recipe")
    args = ap.parse_args()
    fractions = tuple(float(f) for f in args.fractions.split(","))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = make_phantom_dataset(out / "data", DEMO_PHANTOM)
    dc = DataConfig(str(data), format="imagefolder")
    store = extract_features(
        ExtractConfig(
            data=dc,
            backbone=DEMO_BACKBONE,
            pool=DEMO_POOL,
            input_size=DEMO_INPUT_SIZE,
            store=str(out / "store.zarr"),
        ),
        progress=False,
        log=lambda m: None,
    ).store
    probes = run_probes(
        ProbeConfig(
            store=str(store.path),
            models=("logreg",),
            fractions=fractions,
            seeds=args.seeds,
            bootstrap=10,
            out=str(out / "probes"),
        ),
        progress=False,
        log=lambda m: None,
    )
    names = list(VARIANTS)
    if args.variants:
        names = [names[int(i)] for i in args.variants.split(",")]
    rows = []
    results_file = out / "runs.jsonl"
    done = {}
    if results_file.is_file():
        for line in results_file.read_text().splitlines():
            r = json.loads(line)
            done[(r["variant"], r["arm"], r["fraction"], r["seed"])] = r
    for name in names:
        v = dict(VARIANTS[name])
        if v.get("augment") == "strong":
            v["augment"] = AugmentConfig(**STRONG)
        if v.get("head_init") == "probe":
            v["head_init"] = str(probes.out)
        for arm in ("all", args.truncate):
            for f in fractions:
                for seed in range(args.seeds):
                    key = (name, arm, f, seed)
                    if key in done:
                        rows.append(done[key])
                        continue
                    config = from_flat(FinetuneConfig,
                        data=dc,
                        backbone=DEMO_BACKBONE,
                        truncate=arm,
                        pool=DEMO_POOL,
                        input_size=DEMO_INPUT_SIZE,
                        steps=args.steps,
                        eval_every=args.eval_every,
                        patience=10**6,
                        monitor="auroc",
                        fraction=f,
                        seed=seed,
                        bootstrap=10,
                        export_onnx=False,
                        compactness=False,
                        out=str(out / "runs" / f"{names.index(name)}-{arm}-f{f:g}-s{seed}"),
                    )
                    config = replace(config, **v)
                    t = time.perf_counter()
                    r = run_finetune(config, overwrite=True, progress=False, log=lambda m: None)
                    row = {
                        "variant": name,
                        "arm": arm,
                        "fraction": f,
                        "seed": seed,
                        "n_train": r.metrics["n_train"],
                        "best_val_auroc": r.metrics["best_val"],
                        "best_step": r.best_step,
                        "test_auroc": r.metrics["auroc"],
                        "seconds": round(time.perf_counter() - t, 1),
                        "curve": [[h["step"], h["val_auroc"]] for h in r.history],
                    }
                    with open(results_file, "a") as fh:
                        fh.write(json.dumps(row) + "\n")
                    rows.append(row)
                    print(json.dumps({k: v for k, v in row.items() if k != "curve"}), flush=True)
    text = table(rows, fractions, args)
    (out / "recipe.md").write_text(text)
    print(text)


def table(rows: list[dict], fractions, args) -> str:
    import torch

    lines = [
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}. "
        f"{args.steps} steps per run, validation every {args.eval_every}, no early stop; "
        f"{args.seeds} seed(s); truncated arm at {args.truncate}.",
        "",
        "| variant | arm | " + " | ".join(f"f={f:g}: val AUROC (step), test" for f in fractions) + " | s/run |",
        "| --- | --- | " + " | ".join("---" for _ in fractions) + " | ---: |",
    ]
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    for v in variants:
        for arm in dict.fromkeys(r["arm"] for r in rows if r["variant"] == v):
            cells, secs = [], []
            for f in fractions:
                rs = [r for r in rows if r["variant"] == v and r["arm"] == arm and r["fraction"] == f]
                if not rs:
                    cells.append("")
                    continue
                secs += [r["seconds"] for r in rs]
                cells.append(
                    f"{np.mean([r['best_val_auroc'] for r in rs]):.3f} ({np.mean([r['best_step'] for r in rs]):.0f}), "
                    f"{np.mean([r['test_auroc'] for r in rs]):.3f}"
                )
            name = "full" if arm == "all" else f"truncated @ {arm}"
            lines.append(f"| {v} | {name} | " + " | ".join(cells) + f" | {np.mean(secs):.0f} |")
    n_train = {
        f: next(r["n_train"] for r in rows if r["fraction"] == f)
        for f in fractions
        if any(r["fraction"] == f for r in rows)
    }
    lines += ["", "Training images per fraction: " + ", ".join(f"{f:g}: {n}" for f, n in n_train.items()), ""]
    # the validation curve (mean over arms, seeds and fractions) per variant: how many steps learning takes
    lines += ["Mean validation AUROC by step (all arms, fractions and seeds):", ""]
    steps = sorted({s for r in rows for s, _ in r["curve"]})
    shown = [s for s in steps if s % (2 * args.eval_every) == 0 or s == steps[-1]]
    lines += ["| variant | " + " | ".join(str(s) for s in shown) + " |", "| --- |" + " ---: |" * len(shown)]
    for v in variants:
        curves = [dict(r["curve"]) for r in rows if r["variant"] == v]
        lines.append(f"| {v} | " + " | ".join(f"{np.mean([c[s] for c in curves if s in c]):.3f}" for s in shown) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()

"""Benchmark: training speed of tlmic's finetuning loop against a plain fp32 eager loop, in one run.

For each backbone (EfficientNet-Lite0 and ResNet-50 by default), full depth, batch 16:

  (a) plain: the loop a researcher writes: fp32, NCHW, 224 px, AdamW, BCE, no augmentation cost
  (b) plain + torch.compile: the same loop with the network compiled (compile seconds reported)
  (c) tlmic fp32: ``tlmic finetune``'s own loop (``run_finetune()``: on-device augmentation,
      channels_last, per-step seeding), at 224 px
  (d) tlmic auto: the same at ``--precision auto`` (bf16 autocast where the CPU has AVX512-BF16 or AMX)
  (e, f) tlmic at ``--input-size 160`` and ``128`` (the resize follows), the better precision of (c)/(d)
  (g) tlmic, that precision, ``--compile`` (torch.compile of the training network), 224 px

Each row runs ``--repeats`` times, interleaved (a, b, ..., a, b, ...), and the median is reported,
so that a noisy shared machine moves every row alike.

Training images/s exclude the first steps (warm-up) and validation; tlmic's rows come from the
run's own ``history.csv`` (training seconds per evaluation interval). Validation images/s (the
loop's evaluation pass: no autograd, the training precision, batches of 64) are reported beside
the plain loop's eval-mode forward. Prints a markdown table with ratios to (a), writes JSON.

    python benchmarks/finetune_speed.py [--backbones efficientnet_lite0,resnet50] [--steps 24]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import time
from pathlib import Path

BATCH = 16


def plain_loop(backbone_name: str, steps: int, compile_net: bool = False) -> dict:
    """A plain fp32 eager loop on random 224-px batches: images/s after two warm-up steps."""
    import torch

    from tlmic_feats.backbones import build_backbone
    from tlmic_feats.backbones.cutpoints import full_depth_address
    from tlmic_feats.backbones.networks import build_network

    b = build_backbone(backbone_name, "random:0")
    net = build_network(b, full_depth_address(b), 1, 0.2)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    if compile_net:
        torch._dynamo.reset()  # every compiled row compiles afresh (and never hits the recompile limit)
    fwd = torch.compile(net) if compile_net else net
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (BATCH, 1, 224, 224), generator=g, dtype=torch.uint8).float()
    y = (torch.rand(BATCH, 1, generator=g) < 0.4).float()
    net.train()
    t0 = time.perf_counter()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(fwd(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t)
    first = times[0]
    train = BATCH * (steps - 2) / sum(times[2:])
    net.eval()
    xe = torch.randint(0, 256, (64, 1, 224, 224), generator=g, dtype=torch.uint8).float()
    with torch.no_grad():
        net(xe)
        t = time.perf_counter()
        net(xe)
        infer = 64 / (time.perf_counter() - t)
    return {
        "train_img_s": train,
        "eval_img_s": infer,
        "first_step_s": first,
        "total_s": time.perf_counter() - t0,
    }


def tlmic_loop(
    backbone_name: str, data: Path, work: Path, steps: int, precision: str, input_size: int, compile_net: bool = False
) -> dict:
    """``run_finetune()`` itself: training images/s from its history (first interval excluded)."""
    import torch

    from tlmic_feats.data.readers import DataConfig
    from tlmic_feats.finetune.config import FinetuneConfig
    from tlmic_feats.finetune.trainer import run_finetune
    from tlmic_feats.runtime.options import from_flat

    out = work / f"{backbone_name}-{precision}-{input_size}"
    if compile_net:
        torch._dynamo.reset()  # every compiled row compiles afresh (and never hits the recompile limit)
    r = run_finetune(
        from_flat(FinetuneConfig,
            data=DataConfig(str(data), format="imagefolder"),
            backbone=backbone_name,
            weights="random:0",
            truncate="all",
            steps=steps,
            eval_every=2,
            batch_size=BATCH,
            precision=precision,
            input_size=input_size,
            compile=compile_net,
            patience=10**6,
            bootstrap=10,
            export_onnx=False,
            compactness=False,
            out=str(out),
        ),
        overwrite=True,
        progress=False,
        log=lambda m: None,
    )
    from tlmic_feats.data.readers import load_manifest

    hist = r.history[1:]
    n_val = int((load_manifest(DataConfig(str(data), format="imagefolder")).splits == "val").sum())
    shutil.rmtree(out, ignore_errors=True)
    return {
        "train_img_s": BATCH * 2 * len(hist) / sum(h["seconds"] for h in hist),
        "eval_img_s": n_val * len(hist) / sum(h["eval_seconds"] for h in hist),
        "precision": r.metrics["precision"],
        "input_size": r.metrics["input_size"],
    }


def _median_rows(runs: list[dict]) -> dict:
    import numpy as np

    out = dict(runs[0])
    for k in ("train_img_s", "eval_img_s", "first_step_s"):
        if k in out:
            out[k] = float(np.median([r[k] for r in runs]))
    out["repeats"] = [round(r["train_img_s"], 2) for r in runs]
    return out


def _measure(name: str, data: Path, work: Path, args) -> dict:
    """Every row of one backbone, ``args.repeats`` times interleaved; medians. The precision of rows
    (e)-(g) is the faster of (c) and (d) in the first repeat."""
    from functools import partial

    jobs = {"(a) plain fp32 eager loop, 224 px": partial(plain_loop, name, args.steps)}
    if not args.no_compile:
        jobs["(b) plain + torch.compile, 224 px"] = partial(plain_loop, name, args.steps, compile_net=True)
    fp32, auto = "(c) tlmic fp32, 224 px", "(d) tlmic auto precision, 224 px"
    jobs[fp32] = partial(tlmic_loop, name, data, work, args.steps, "fp32", 0)
    jobs[auto] = partial(tlmic_loop, name, data, work, args.steps, "auto", 0)
    runs = {label: [job()] for label, job in jobs.items()}
    best = "fp32" if runs[fp32][0]["train_img_s"] >= runs[auto][0]["train_img_s"] else "auto"
    more = {
        f"(e) tlmic {best}, --input-size 160": partial(tlmic_loop, name, data, work, args.steps, best, 160),
        f"(f) tlmic {best}, --input-size 128": partial(tlmic_loop, name, data, work, args.steps, best, 128),
    }
    if not args.no_compile:
        more[f"(g) tlmic {best} --compile, 224 px"] = partial(tlmic_loop, name, data, work, args.steps, best, 0, True)
    runs.update({label: [job()] for label, job in more.items()})
    jobs.update(more)
    for _ in range(args.repeats - 1):
        for label, job in jobs.items():
            runs[label].append(job())
    return {label: _median_rows(rs) for label, rs in runs.items()}


def main() -> None:
    import torch

    from tlmic_feats.data.phantom import PhantomConfig, make_phantom_dataset

    ap = argparse.ArgumentParser()
    ap.add_argument("--backbones", default="efficientnet_lite0,resnet50")
    ap.add_argument("--steps", type=int, default=24)
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows (slow to compile)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default="cache/bench/finetune_speed")
    args = ap.parse_args()
    work = Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    data = make_phantom_dataset(work / "data", PhantomConfig(n_train=64, n_val=64, n_test=8))
    doc = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"threads {torch.get_num_threads()}",
        "batch": BATCH,
        "steps": args.steps,
        "rows": [],
    }
    for name in args.backbones.split(","):
        rows = _measure(name, data, work, args)
        base = rows["(a) plain fp32 eager loop, 224 px"]["train_img_s"]
        for label, r in rows.items():
            r.update(backbone=name, method=label, ratio=r["train_img_s"] / base)
            doc["rows"].append(r)
            print(
                f"{name:18s} {label:42s} train {r['train_img_s']:6.1f} img/s ({r['ratio']:.2f}x), "
                f"eval {r['eval_img_s']:6.1f} img/s",
                flush=True,
            )
    lines = [
        f"Machine: {doc['machine']}; batch {BATCH}, {args.steps} steps per row, full depth, training images/s "
        "after warm-up.",
        "",
        "| backbone | method | precision | train img/s | vs (a) | eval img/s |",
        "| --- | --- | --- | ---: | ---: | ---: |",
    ]
    for r in doc["rows"]:
        prec = r.get("precision", "fp32")
        lines.append(
            f"| {r['backbone']} | {r['method']} | {prec} | {r['train_img_s']:.1f} | {r['ratio']:.2f}x | "
            f"{r['eval_img_s']:.1f} |"
        )
    text = "\n".join(lines) + "\n"
    (work / "finetune_speed.md").write_text(text)
    (work / "finetune_speed.json").write_text(json.dumps(doc, indent=1))
    print(text)


if __name__ == "__main__":
    main()

"""Benchmark: the probe grid on every unit-level cut point of ResNet-50.

16 layers (256 to 2048 columns, ResNet-50's bottleneck widths), a 5,000-image store, both probe
models, 3 fractions x 3 seeds, 1,000 bootstrap resamples. Reports wall time and peak memory
against the largest single layer's feature matrix (a probe should never load more than its layer).

The features are synthetic (post-ReLU, low-rank correlated, a label-bearing latent factor whose
strength grows with depth): extracting 5,000 real ResNet-50 images would take 12 minutes of this
CPU and is not what is being measured here.

    python benchmarks/probe_grid.py [--n 5000] [--out cache/bench/probe_grid]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np

WIDTHS = [256] * 3 + [512] * 4 + [1024] * 6 + [2048] * 3
ADDRESSES = [f"{k}.{u}" for k, n in ((1, 3), (2, 4), (3, 6), (4, 3)) for u in range(1, n + 1)]


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_store(path: Path, n: int, seed: int = 0):
    from tlmic_feats import FeatureStore

    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.25).astype(np.float32)
    splits = np.array(
        ["train"] * int(0.7 * n) + ["val"] * int(0.15 * n) + ["test"] * (n - int(0.7 * n) - int(0.15 * n))
    )
    feats = {}
    for depth, (address, width) in enumerate(zip(ADDRESSES, WIDTHS, strict=True)):
        rank = 32
        z = rng.normal(size=(n, rank)).astype(np.float32)
        z[:, 0] += (0.3 + 0.1 * depth) * (2 * y - 1)
        mix = rng.normal(size=(rank, width)).astype(np.float32) / np.sqrt(rank)
        x = z @ mix + 0.5 * rng.normal(size=(n, width)).astype(np.float32)
        feats[address] = np.maximum(x, 0)
    return FeatureStore.from_arrays(
        path,
        feats,
        labels=y,
        label_kind="binary",
        label_names=["neg", "pos"],
        splits=splits,
        chunk_rows=1024,
        description="synthetic resnet50 units",
    )


def slug(s: str) -> str:
    return s.replace(" ", "-")


def _probe(q, store: str, layers: str, fractions, seeds: int, out: str) -> None:
    from tlmic_feats.probes.config import ProbeConfig
    from tlmic_feats.probes.grid import run_probes

    base = rss_mb()  # after imports
    t = time.perf_counter()
    run = run_probes(ProbeConfig(store=store, layers=layers, fractions=fractions, seeds=seeds, out=out), progress=False)
    wall = time.perf_counter() - t
    per_model = {
        m: round(sum(r["fit_seconds"] for r in run.rows if r["model"] == m), 1) for m in ("logreg", "lightgbm")
    }
    q.put(
        {
            "wall": round(wall, 1),
            "peak": round(rss_mb(), 1),
            "base": round(base, 1),
            "fits": len(run.rows),
            "per_model": per_model,
        }
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--fractions", default="0.1,0.5,1.0")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--out", default="cache/bench/probe_grid")
    args = ap.parse_args()
    out = Path(args.out)
    import shutil

    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    # The store is generated in a child process, so that this process's peak RSS (a high-water
    # mark) measures probing alone.
    import multiprocessing as mp

    t = time.perf_counter()
    child = mp.get_context("spawn").Process(target=make_store, args=(out / "store.zarr", args.n))
    child.start()
    child.join()
    build_s = time.perf_counter() - t
    fractions = tuple(float(f) for f in args.fractions.split(","))
    largest_mb = args.n * max(WIDTHS) * 4 / 2**20
    # Each measurement in its own process: ru_maxrss is a per-process high-water mark.
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    runs = {}
    for name, layers in (("all 16 layers", "all"), ("largest layer only", ADDRESSES[-1])):
        p = ctx.Process(
            target=_probe, args=(q, str(out / "store.zarr"), layers, fractions, args.seeds, str(out / slug(name)))
        )
        p.start()
        runs[name] = q.get()
        p.join()
    full = runs["all 16 layers"]
    fits = full["fits"]
    wall, per_model, peak, base_rss = full["wall"], full["per_model"], full["peak"], full["base"]
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {__import__('os').cpu_count()} cores, {platform.python_version()}",
        "n_images": args.n,
        "layers": len(ADDRESSES),
        "fits": fits,
        "fractions": fractions,
        "seeds": args.seeds,
        "store_build_seconds": round(build_s, 1),
        "largest_layer_mb": round(largest_mb, 1),
        "runs": runs,
    }
    print(f"{'n images':24s} {args.n}\n{'layers x fits':24s} {len(ADDRESSES)} layers, {fits} fits")
    print(f"{'wall time':24s} {wall:.1f} s (target < 600 s)")
    print(f"{'fit time, logreg':24s} {per_model['logreg']:.1f} s summed over fits")
    print(f"{'fit time, lightgbm':24s} {per_model['lightgbm']:.1f} s summed over fits")
    print(f"{'peak RSS':24s} {peak:.0f} MB (before probing: {base_rss:.0f} MB; largest layer {largest_mb:.0f} MB)")
    one = runs["largest layer only"]
    print(
        f"{'peak RSS, largest only':24s} {one['peak']:.0f} MB (before probing: {one['base']:.0f} MB; {one['fits']} fits, {one['wall']:.1f} s)"
    )
    print(
        f"{'peak over baseline':24s} all layers {peak - base_rss:.0f} MB vs largest layer alone {one['peak'] - one['base']:.0f} MB "
        f"(= {(peak - base_rss) / largest_mb:.1f}x vs {(one['peak'] - one['base']) / largest_mb:.1f}x the largest layer)"
    )
    (out / "result.json").write_text(json.dumps(result, indent=2))
    json.dump(result, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()

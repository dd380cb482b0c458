"""Benchmark: a Dask local cluster and torchrun against a single process, on this machine.

Same inputs, same machine, in one run: wall time of
(1) ``tlmic extract`` (every cut point of EfficientNet-Lite0, the demo's 320 phantom images) in one
    process vs ``--cluster local:2`` (checks the two stores are equal bit for bit);
(2) ``tlmic probe`` (every layer, both models, fractions 0.25 and 1, 3 seeds) locally vs
    ``--cluster local:2`` (checks ``results.csv`` is equal, ``fit_seconds`` aside);
(3) ``tlmic finetune`` (ResNet-18 truncated at 2, random weights, 2 epochs, global batch 32) in one
    process vs ``--nproc 2`` (torchrun, gloo).
Each is run as the command a user types, start-up included. Prints a table, writes JSON.

    python benchmarks/cluster.py [--out cache/bench/cluster.json]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

CLI = [sys.executable, "-c", "from tlmic_cli.main import main; main()"]


def timed(args: list[str], env: dict) -> float:
    t = time.perf_counter()
    subprocess.run([*CLI, *args], env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t


def rows(path: Path) -> list[dict]:
    with open(path) as f:
        return [{k: v for k, v in r.items() if k != "fit_seconds"} for r in csv.DictReader(f)]


def main() -> None:
    import numpy as np

    from tlmic_feats import FeatureStore
    from tlmic_feats.data.phantom import PhantomConfig, make_phantom_dataset

    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="cache/bench/cluster.json")
    ap.add_argument("--work", default="cache/bench/cluster")
    args = ap.parse_args()
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    data = make_phantom_dataset(work / "data", PhantomConfig())
    env = {**os.environ, "TLMIC_CACHE": str(work / "cache")}
    ex = ["extract", "--data", str(data), "--backbone", "efficientnet_lite0", "--layers", "all", "--quiet"]
    # the single process reads through the pixel cache; build it first so that both sides decode once
    timed([*ex, "--store", str(work / "warm.zarr")], env)
    results = {}
    t1 = timed([*ex, "--store", str(work / "one.zarr")], env)
    t2 = timed([*ex, "--store", str(work / "two.zarr"), "--cluster", "local:2"], env)
    a, b = FeatureStore.open(work / "one.zarr"), FeatureStore.open(work / "two.zarr")
    same = all(np.array_equal(a.features(x), b.features(x)) for x in a.addresses)
    results["extract"] = {"single_s": t1, "cluster_s": t2, "identical": same, "images": len(a)}

    pr = ["probe", "--store", str(work / "one.zarr"), "--fractions", "0.25,1.0", "--seeds", "3", "--quiet"]
    t1 = timed([*pr, "--out", str(work / "p1")], env)
    t2 = timed([*pr, "--out", str(work / "p2"), "--cluster", "local:2"], env)
    same = rows(work / "p1" / "results.csv") == rows(work / "p2" / "results.csv")
    results["probe"] = {
        "single_s": t1,
        "cluster_s": t2,
        "identical": same,
        "fits": len(rows(work / "p1" / "results.csv")),
    }

    ft = ["finetune", "--data", str(data), "--backbone", "resnet18", "--weights", "random:0", "--truncate", "2"]
    ft += ["--epochs", "2", "--no-onnx", "--bootstrap", "200", "--quiet"]
    t1 = timed([*ft, "--batch-size", "32", "--out", str(work / "f1")], env)
    t2 = timed([*ft, "--batch-size", "16", "--out", str(work / "f2"), "--nproc", "2"], env)
    m1 = json.loads((work / "f1" / "metrics.json").read_text())
    m2 = json.loads((work / "f2" / "metrics.json").read_text())
    results["finetune"] = {
        "single_s": t1,
        "nproc2_s": t2,
        "auroc_single": m1["auroc"],
        "auroc_nproc2": m2["auroc"],
        "world_size": m2["world_size"],
    }
    results["machine"] = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
    }
    print(f"machine: {results['machine']}")
    print("| job | one process (s) | local:2 / --nproc 2 (s) | ratio | same result |")
    print("| --- | ---: | ---: | ---: | --- |")
    for job in ("extract", "probe"):
        r = results[job]
        print(
            f"| {job} | {r['single_s']:.1f} | {r['cluster_s']:.1f} | {r['cluster_s'] / r['single_s']:.2f} | {r['identical']} |"
        )
    r = results["finetune"]
    print(
        f"| finetune | {r['single_s']:.1f} | {r['nproc2_s']:.1f} | {r['nproc2_s'] / r['single_s']:.2f} | "
        f"AUROC {r['auroc_single']:.3f} vs {r['auroc_nproc2']:.3f} (different batches per step) |"
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()

"""Benchmark: `tlmic similarity` on 30 layers of a 5,000-image store: wall time and peak memory.

Two layer sets: EfficientNet-Lite0-like widths (16 to 1,280: its cut points' widths, repeated to 30
layers) and ResNet-50-like ones (256 to 2,048, "a few thousand wide"). Each run is a separate
process (its peak RSS is its own); the store is written once beforehand. Methods: cka (full
estimator: every image at once), cka-debiased, svcca, and cka with the minibatch estimator.
The features are synthetic (post-ReLU, low-rank correlated between neighbouring layers): the cost of
the measures does not depend on the values.

    python benchmarks/similarity.py [--n 5000] [--sets lite0,resnet50] [--out cache/bench/similarity]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

WIDTHS = {
    "lite0": ([16, 24, 24, 40, 40, 80, 80, 80, 112, 112, 112, 192, 192, 192, 192, 320, 1280] * 2)[:30],
    "resnet50": ([256] * 3 + [512] * 4 + [1024] * 6 + [2048] * 3) * 2,
}
RUNS = [("cka", "full"), ("cka-debiased", "full"), ("svcca", "full"), ("cka", "minibatch")]


def make_store(path: Path, n: int, widths: list[int], seed: int = 0):
    from tlmic_feats import FeatureStore

    rng = np.random.default_rng(seed)
    latent = rng.normal(size=(n, 64)).astype(np.float32)
    feats = {}
    for i, width in enumerate(widths[:30]):
        latent = 0.9 * latent + 0.45 * rng.normal(size=latent.shape).astype(np.float32)  # drifts with depth
        mix = rng.normal(size=(64, width)).astype(np.float32) / 8
        feats[str(i + 1)] = np.maximum(latent @ mix + 0.5 * rng.normal(size=(n, width)).astype(np.float32), 0)
    splits = np.array(["train", "val", "test"])[np.arange(n) % 3]
    return FeatureStore.from_arrays(
        path, feats, labels=(np.arange(n) % 2).astype(np.float32), label_kind="binary", label_names=["a", "b"],
        splits=splits, chunk_rows=256, description="synthetic similarity benchmark",
    )  # fmt: skip


def one_run(store: str, method: str, estimator: str, out: str) -> dict:
    from tlmic_feats import SimilarityConfig, run_similarity

    t0 = time.perf_counter()
    result = run_similarity(
        SimilarityConfig(store=store, method=method, estimator=estimator, out=out, overwrite=True), progress=False
    )
    return {
        "method": method,
        "estimator": result.estimator,
        "layers": len(result.names_a),
        "n": result.n_images,
        "seconds": round(time.perf_counter() - t0, 1),
        "similarity_seconds": round(result.seconds, 1),
        "peak_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--sets", default="lite0,resnet50")
    ap.add_argument("--runs", default=",".join(f"{m}:{e}" for m, e in RUNS))
    ap.add_argument("--out", default="cache/bench/similarity")
    ap.add_argument("--one", nargs=4, help=argparse.SUPPRESS)  # store method estimator out: a child process
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one_run(*args.one)))
        return
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in args.sets.split(","):
        store = out / f"{name}-{args.n}.zarr"
        if not store.exists():
            make_store(store, args.n, WIDTHS[name])
        for run in args.runs.split(","):
            method, estimator = run.split(":")
            cmd = [
                sys.executable,
                __file__,
                "--one",
                str(store),
                method,
                estimator,
                str(out / f"{name}-{method}-{estimator}"),
            ]
            row = {"set": name, "sum_width": sum(WIDTHS[name][:30]), **json.loads(subprocess.check_output(cmd))}
            rows.append(row)
            print(json.dumps(row), flush=True)
    (out / "results.json").write_text(
        json.dumps({"machine": platform.processor() or platform.machine(), "rows": rows}, indent=1)
    )


if __name__ == "__main__":
    main()

"""Benchmark: the fixed cost of tlmic's commands and the per-run overhead of a study, A against B.

Times whole commands as processes, A and B in turn (A B A B ...), after one warm-up each, and
prints per command the median wall and CPU seconds of each side and the median of the pair-by-pair
ratio A/B (a shared machine slows a pair alike, so the ratio holds when the absolute times drift).
B is another checkout of tlmic: ``--base DIR`` puts it first on ``PYTHONPATH`` (with a ``tlmic_cli``
link to its ``cli/``), e.g. a ``git worktree`` or ``git archive`` of the commit before a change.

Commands (phantom data generated under ``--root``; the cache is ``--root``/cache):

  help     ``tlmic --help``
  layers   ``tlmic layers --backbone efficientnet_lite0``
  extract  ``tlmic extract`` of 48 phantom images, 96 px, into a finished store (model weights and
           pixels cached: the whole cost is the fixed one)
  finetune ``tlmic finetune --resume`` of a finished 20-step run
  study    a small study (``--steps 20 --input-size 64``, 120 training images, 5 runs), once per
           side; reports per side the runs' training seconds, their wall seconds and the overhead
           share (wall - training) / training from ``results.csv``

    python benchmarks/overhead.py --base /tmp/tlmic-base [--repeats 5] [--only layers,help]

Measured 2026-12-07 on 2 shared CPU cores (Intel Xeon, 24 GiB, no GPU; other jobs running, so
the ratios are what to quote), whole-process medians of 5 paired runs, A = cut-point tables,
checkpoint cadence, one full-depth compactness per process; B = the commit before:

| command | A wall s | B wall s | A/B wall | A cpu s | B cpu s |
| --- | ---: | ---: | ---: | ---: | ---: |
| tlmic --help | 0.085 | 0.087 | 0.99 | 0.08 | 0.09 |
| tlmic layers --backbone efficientnet_lite0 | 0.35 | 13.0 | 0.030 | 0.29 | 9.2 |
| tlmic extract (48 images, finished store) | 14.3 | 14.2 | 1.04 | 9.6 | 10.0 |
| tlmic finetune --resume (finished 20-step run) | 9.4 | 9.4 | 1.02 | 9.4 | 9.2 |

The small study (5 runs, one of each side): runs trained 45.9 s and took 71.6 s of run wall time
(overhead 56 %; 26 % without the 20 validations per run) against 36.7 s and 63.6 s (73 %; 41 %);
the metrics of every run were identical. What is left of a command's fixed cost is importing
torch, timm and torchvision (timm imports torchvision.ops, which imports torch._dynamo).
"""

from __future__ import annotations

import argparse
import csv
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]


def run_once(cmd: list[str], env: dict) -> tuple[float, float]:
    """Wall and CPU (user + sys, the process and its children) seconds of one run."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def paired(name: str, args: list[str], env_a: dict, env_b: dict, repeats: int) -> None:
    cmd = [sys.executable, "-m", "tlmic_cli.main", *args]
    run_once(cmd, env_a), run_once(cmd, env_b)  # warm-up: page cache, pixel cache, table cache
    a, b = [], []
    for _ in range(repeats):
        a.append(run_once(cmd, env_a))
        b.append(run_once(cmd, env_b))
    wall_a, wall_b = (statistics.median(w for w, _ in s) for s in (a, b))
    cpu_a, cpu_b = (statistics.median(c for _, c in s) for s in (a, b))
    ratio = statistics.median(x[0] / y[0] for x, y in zip(a, b, strict=True))
    print(f"| {name} | {wall_a:.2f} | {wall_b:.2f} | {ratio:.3f} | {cpu_a:.2f} | {cpu_b:.2f} |", flush=True)


def study_share(side: str, args: list[str], env: dict, out: Path) -> None:
    t = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "tlmic_cli.main", *args, "--out", str(out), "--store", str(out) + ".zarr"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=True,
    )
    wall = time.perf_counter() - t
    with open(out / "results.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["wall_seconds"]]
    train = sum(float(r["train_seconds"]) for r in rows)
    run_wall = sum(float(r["wall_seconds"]) for r in rows)
    print(
        f"| {side} | {len(rows)} | {train:.1f} | {run_wall:.1f} | {(run_wall - train) / train:.0%} | {wall:.1f} |",
        flush=True,
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--base", required=True, help="checkout of tlmic to compare against (B)")
    p.add_argument("--root", default="bench-overhead", help="working folder (data, cache, runs)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--only", default="help,layers,extract,finetune,study")
    a = p.parse_args()
    root = Path(a.root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    base = Path(a.base).resolve()
    link = base / "tlmic_cli"
    if not link.exists():
        link.symlink_to(base / "cli")
    common = {**os.environ, "OMP_NUM_THREADS": "1", "TLMIC_CACHE": str(root / "cache")}
    env_a = {**common, "PYTHONPATH": str(HERE)}
    env_b = {**common, "PYTHONPATH": str(base)}

    from tlmic_feats.data.phantom import PhantomConfig, make_phantom_dataset

    small = make_phantom_dataset(root / "data", PhantomConfig(n_train=24, n_val=12, n_test=12, size=96))
    bigger = make_phantom_dataset(root / "data", PhantomConfig(n_train=120, n_val=40, n_test=40, size=96))
    only = a.only.split(",")
    print("| command | A wall s | B wall s | A/B wall (median of pairs) | A cpu s | B cpu s |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    if "help" in only:
        paired("tlmic --help", ["--help"], env_a, env_b, a.repeats)
    if "layers" in only:
        paired("tlmic layers --backbone efficientnet_lite0", ["layers", "--backbone", "efficientnet_lite0"], env_a, env_b, a.repeats)  # fmt: skip
    if "extract" in only:
        store = root / "extract.zarr"
        args = ["extract", "--data", str(small), "--backbone", "efficientnet_lite0", "--input-size", "96"]
        paired("tlmic extract (48 images, finished store)", [*args, "--store", str(store)], env_a, env_b, a.repeats)
    if "finetune" in only:
        args = ["finetune", "--data", str(small), "--backbone", "efficientnet_lite0", "--truncate", "4"]
        args += ["--steps", "20", "--input-size", "64", "--out", str(root / "ft"), "--resume"]
        paired("tlmic finetune --resume (finished 20-step run)", args, env_a, env_b, a.repeats)
    if "study" in only:
        args = ["study", "--data", str(bigger), "--backbone", "efficientnet_lite0", "--steps", "20"]
        args += ["--input-size", "64", "--fractions", "1.0", "--seeds", "1", "--baselines", "cbr-tiny,hybrid"]
        args += ["--top-blocks", "2", "--top-units", "0", "--no-scratch", "--bootstrap", "200", "--quiet"]
        print("\n| side | runs | training s | run wall s | overhead share | study wall s |")
        print("| --- | ---: | ---: | ---: | ---: | ---: |")
        study_share("A", args, env_a, root / "study-a")
        study_share("B", args, env_b, root / "study-b")


if __name__ == "__main__":
    main()

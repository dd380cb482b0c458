"""Are the verdicts calibrated? Coverage and A/A on a two-level model with a known difference.

Simulated studies (``tlmic_feats/testing/simulation.py``): training runs scored on shared test images, a seed
effect shared by the arms of a seed, a run effect of each run, and an image effect shared by all.
For several regimes (seed variance dominant, image variance dominant, few test images, 5 seeds):

* coverage of the 95% interval of the expected AUROC difference (target 93-97%), for the verdicts'
  studentized interval and, beside it, the plain two-way (pigeonhole) bootstrap percentile interval;
* A/A: the same arm with disjoint seed sets (unpaired), the share of studies that claim a winner
  ("A better" or "B better") with the default rope 0.01 and with rope 0, against DeLong on the seed
  means (p < 0.05, the study's test before the verdicts: the trained weights held fixed).

    python benchmarks/verdicts.py [--studies 1000] [--resamples 200]
"""

from __future__ import annotations

import argparse
import time

REGIMES = {
    "seed-dominated": dict(tau_seed=0.5, tau_run=0.1, rho=0.2, n_test=100),
    "balanced": dict(tau_seed=0.3, tau_run=0.3, rho=0.5, n_test=200),
    "image-dominated": dict(tau_seed=0.05, tau_run=0.05, rho=0.8, n_test=200),
}


def main() -> None:
    import numpy as np

    from tlmic_feats.metrics.paired import delong_mean
    from tlmic_feats.metrics.verdicts import compare_runs
    from tlmic_feats.testing.simulation import TwoLevel, simulate

    ap = argparse.ArgumentParser()
    ap.add_argument("--studies", type=int, default=1000)
    ap.add_argument("--resamples", type=int, default=200)
    args = ap.parse_args()
    n, b = args.studies, args.resamples
    print(f"{n} simulated studies per row, {b} resamples each\n")
    print("| regime | seeds | coverage, studentized | coverage, pigeonhole percentile | s |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, kw in REGIMES.items():
        for seeds in (3, 5):
            model = TwoLevel(**kw)
            rng, truth, hit, hit_boot, t = np.random.default_rng(0), model.truth(), 0, 0, time.perf_counter()
            for k in range(n):
                y, a, bb = simulate(model, rng, seeds)
                v = compare_runs(y, a, bb, metrics=("auroc",), n_resamples=b, random_state=k)["auroc"]
                hit += v.ci95[0] <= truth <= v.ci95[1]
                hit_boot += v.ci95_bootstrap[0] <= truth <= v.ci95_bootstrap[1]
            print(f"| {name} | {seeds} | {hit / n:.3f} | {hit_boot / n:.3f} | {time.perf_counter() - t:.0f} |")
    print("\nA/A (the same arm, seeds 0-2 vs 3-5, unpaired): share of studies claiming a winner\n")
    print("| regime | verdicts, rope 0.01 | verdicts, rope 0 | DeLong on seed means, p < 0.05 |")
    print("| --- | ---: | ---: | ---: |")
    for name, kw in REGIMES.items():
        model = TwoLevel(**{**kw, "mu_b": 1.0})
        rng, counts = np.random.default_rng(1), {"rope": 0, "zero": 0, "delong": 0}
        for k in range(n):
            y, a, bb = simulate(model, rng, 3, paired=False)
            for key, rope in (("rope", 0.01), ("zero", 0.0)):
                v = compare_runs(y, a, bb, paired=False, metrics=("auroc",), n_resamples=b, random_state=k, rope=rope)
                counts[key] += v["auroc"].verdict in ("a_better", "b_better")
            counts["delong"] += delong_mean(y, a, bb)["p"] < 0.05
        print(f"| {name} | {counts['rope'] / n:.3f} | {counts['zero'] / n:.3f} | {counts['delong'] / n:.3f} |")


if __name__ == "__main__":
    main()

"""A two-level model of training runs scored on shared test images, with a known difference between
two arms: the ground truth that the verdicts' calibration tests and ``benchmarks/verdicts.py`` use.

Run ``r`` of arm X scores test image ``i`` as ``d_Xr * y_i + sqrt(rho) e_i + sqrt(1 - rho) eps_Xri``:
``e_i`` is the image's own difficulty (shared by every run), ``d_Xr = mu_X + u_r + a_Xr`` the run's
separation, ``u_r`` the seed's effect (shared by both arms of a seed: the same training subset) and
``a_Xr`` the run's own. A positive minus a negative score is ``N(d, 2)`` given ``d``, so the expected
AUROC over runs and test images is ``Phi(mu_X / sqrt(2 + tau_seed^2 + tau_run^2))``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class TwoLevel:
    mu_a: float = 1.0
    mu_b: float = 0.9
    tau_seed: float = 0.3
    tau_run: float = 0.3
    rho: float = 0.5
    n_test: int = 200
    prevalence: float = 0.3

    def truth(self) -> float:
        from scipy.stats import norm

        scale = np.sqrt(2 + self.tau_seed**2 + self.tau_run**2)
        return float(norm.cdf(self.mu_a / scale) - norm.cdf(self.mu_b / scale))


def simulate(model: TwoLevel, rng: np.random.Generator, seeds_a: int = 3, seeds_b: int | None = None, paired=True):
    """``(y, runs_a, runs_b)`` of one simulated study: fresh test images, fresh runs. Paired: run r of
    both arms shares the seed effect ``u_r``; otherwise every run has its own."""
    seeds_b = seeds_a if seeds_b is None else seeds_b
    n = model.n_test
    y = np.zeros(n)
    y[: max(2, int(round(model.prevalence * n)))] = 1
    e = rng.normal(size=n)
    u_a = rng.normal(0, model.tau_seed, seeds_a)
    u_b = u_a[:seeds_b] if paired else rng.normal(0, model.tau_seed, seeds_b)

    def runs(mu, u):
        d = mu + u + rng.normal(0, model.tau_run, len(u))
        return [dr * y + np.sqrt(model.rho) * e + np.sqrt(1 - model.rho) * rng.normal(size=n) for dr in d]

    return y, runs(model.mu_a, u_a), runs(model.mu_b, u_b)

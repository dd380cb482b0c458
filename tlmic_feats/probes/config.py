"""A probe grid's configuration, recorded in its run directory's ``run.json``."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from ..runtime.errors import UsageError, check_choice
from ..runtime.seeds import Seeds, check_seeds, seed_list
from .permutation import DEFAULT_PERMUTATIONS

CONTROLS = ("none", "shuffle")


MODELS = ("logreg", "lightgbm")  # the keys of estimators.PROBES (tested), named here without importing them

@dataclass(frozen=True)
class ProbeConfig:
    """A probe grid. Recorded in ``run.json`` in the run directory."""

    store: str
    layers: str = "all"
    models: tuple[str, ...] = MODELS
    fractions: tuple[float, ...] = (1.0,)
    seeds: Seeds = 3  # a count (seeds 0..n-1) or the seeds themselves
    out: str = ""
    control: str = "none"  # "shuffle": also fit permutation draws (permuted train and val labels)
    permutations: int = DEFAULT_PERMUTATIONS  # shuffle: draws on every layer, one permutation each (permutation.py)
    bootstrap: int = 1000
    n_jobs: int = 0  # 0: one per CPU core
    save_probes: bool = True
    cluster: str = ""  # local:N or tcp://HOST:PORT: every cell a Dask task (see cluster.py); same results
    distributed_fit: bool = False  # LightGBM cells trained by lightgbm.dask on row chunks of the store

    @property
    def seed_list(self) -> tuple[int, ...]:
        """The seeds of the grid (each draws its own nested training subsets)."""
        return seed_list(self.seeds)

    @property
    def grid_key(self) -> dict:
        """The fields that define the grid's results (where it runs does not)."""
        record = json.loads(json.dumps(asdict(self)))
        for k in ("n_jobs", "cluster"):
            record.pop(k)
        if self.control == "none":
            record.pop("permutations")  # no draws: the count changes nothing
        else:  # a run whose draws were permuted per layer (before) must not resume with shared ones
            record["null"] = "one permutation per draw, every layer"
        return record

    def validate(self) -> None:
        bad = [m for m in self.models if m not in MODELS]
        if bad or not self.models:
            raise UsageError(f"--model {','.join(bad) or '(none)'} is not valid; valid: logreg, lightgbm, both")
        check_choice("--control", self.control, CONTROLS)
        if self.control == "shuffle" and self.permutations < 2:
            raise UsageError(f"--permutations {self.permutations}: need at least 2 (the null is judged by its spread)")
        for f in self.fractions:
            if not 0 < f <= 1:
                raise UsageError(f"fraction {f} is not in (0, 1]; e.g. --fractions 0.05,0.1,1.0")
        check_seeds(self.seeds)
        if self.cluster:
            from ..runtime.cluster import parse_cluster

            parse_cluster(self.cluster, device="cpu")
        if self.distributed_fit and (not self.cluster or tuple(self.models) != ("lightgbm",)):
            raise UsageError(
                "--distributed-fit trains LightGBM across a Dask cluster: it needs --cluster and --model lightgbm "
                f"(got --cluster {self.cluster or '(none)'}, --model {','.join(self.models)})"
            )

"""A probe grid's configuration, recorded in its run directory's ``run.json``."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Literal, get_args

from ..runtime.errors import UsageError
from ..runtime.options import (
    bootstrap_option,
    check_fields,
    cluster_option,
    coerce_paths,
    float_list,
    name_list,
    name_of,
    option,
    seeds_option,
)
from ..runtime.seeds import Seeds, check_seeds, seed_list
from .permutation import DEFAULT_PERMUTATIONS

Control = Literal["none", "shuffle"]
CONTROLS: tuple[str, ...] = get_args(Control)

MODELS = ("logreg", "lightgbm")  # the keys of estimators.PROBES (tested), named here without importing them


def parse_models(text: str) -> tuple[str, ...]:
    """``"logreg"``, ``"logreg,lightgbm"`` or ``"both"``."""
    return MODELS if str(text).strip() == "both" else name_list(text)


@dataclass(frozen=True)
class ProbeConfig:
    """A probe grid. Recorded in ``run.json`` in the run directory.

    >>> from tlmic_feats import ProbeConfig
    >>> ProbeConfig(store="cache/stores/cxr.zarr", layers="3,4", models=("logreg",)).layers
    '3,4'
    """

    store: str = option("", "A finished feature store (from `tlmic extract`); the command line finds it from --data.")
    layers: str = option("all", "all, blocks, units, or addresses like 3,3.4.", aliases=("--layer",))
    models: tuple[str, ...] = option(
        MODELS, "Probe models: logreg, lightgbm, or both.", choices=MODELS, parse=parse_models, aliases=("--model",)
    )
    fractions: tuple[float, ...] = option(
        (1.0,), "Training-set fractions (nested subsets), e.g. 0.05,0.1,0.2,0.5,1.0.", gt=0, le=1, parse=float_list
    )
    seeds: Seeds = seeds_option("Seeds per fraction (subset draw and probe): a count (3: seeds 0, 1, 2) or a list (3,4,5).")
    out: str = option("", "Run directory (default: under cache/runs).")
    control: Control = option(
        "none",
        "shuffle: also fit permutation draws (permuted training and validation labels) and judge their test AUROC "
        "against its own null (a leak lifts it above chance).",
        choices=CONTROLS,
    )
    permutations: int = option(
        DEFAULT_PERMUTATIONS,
        "With control shuffle: permutation draws per model x fraction, each refitted on every layer with one "
        "permutation (p-values down to 1/(N+1), per layer and corrected for picking the best layer).",
        ge=2,
    )
    bootstrap: int = bootstrap_option()
    n_jobs: int = option(0, "Parallel fits (0: one per core).", flag="--jobs", ge=0)
    save_probes: bool = option(True, "Save every fitted probe (LP-FT starts heads from them).", flag="--save-probes/--no-save-probes")
    cluster: str = cluster_option(
        "Fit the cells as Dask tasks (same results as a local run); workers must see the store and --out."
    )
    distributed_fit: bool = option(
        False,
        "With cluster and models lightgbm: train each LightGBM on row chunks across the workers (a layer too large "
        "for one machine's memory).",
    )

    def __post_init__(self) -> None:
        coerce_paths(self, "store", "out")

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
        check_fields(self)
        if not self.store:
            raise UsageError(f"{name_of(self, 'store')} is empty: give a feature store (from extract_features)")
        if not self.models:
            raise UsageError(f"{name_of(self, 'models')} is empty; valid: logreg, lightgbm, both")
        check_seeds(self.seeds, name_of(self, "seeds"))
        if self.cluster:
            from ..runtime.cluster import parse_cluster

            parse_cluster(self.cluster, device="cpu")
        if self.distributed_fit and (not self.cluster or tuple(self.models) != ("lightgbm",)):
            raise UsageError(
                f"{name_of(self, 'distributed_fit')} trains LightGBM across a Dask cluster: it needs cluster and "
                f"models lightgbm (got cluster {self.cluster or '(none)'}, models {','.join(self.models)})"
            )
        if self.distributed_fit:
            from ..runtime.cluster import DISTRIBUTED_FIT_MODULES, require_cluster_packages

            require_cluster_packages(name_of(self, "distributed_fit"), DISTRIBUTED_FIT_MODULES)

"""LP-FT: a finetuned head that starts from the fitted logistic-regression probe of its cut point."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..runtime.errors import UsageError


def head_from_probe(
    probe_dir: str | Path,
    address: str,
    fraction: float,
    seed: int,
    backbone_name: str,
    pool: str = "avg",
    input_size: int | None = None,
):
    """(weight, bias, probe name) for the head from a probe run's logistic-regression probe at
    ``address``, fitted on the same training subset (``fraction``, ``seed``).

    The probe standardizes (z = (x - mean) / scale) before its linear map; folding that in gives
    a head on raw pooled features. The probe run must be on features of the same backbone, pooled
    with ``pool`` at ``input_size`` (checked from its run record).
    """
    from ..probes.estimators import load_probe
    from ..probes.grid import fitted_probe_dir

    probe_dir = Path(probe_dir)
    record_file = probe_dir / "run.json"
    if not record_file.is_file():
        raise UsageError(f"--head-init {probe_dir}: not a probe run directory (no run.json)")
    fp = json.loads(record_file.read_text())["store_fingerprint"]
    if fp.get("backbone") != backbone_name or fp.get("pool") != pool:
        raise UsageError(
            f"--head-init {probe_dir}: its probes are on {fp.get('backbone')} features pooled "
            f"{fp.get('pool')!r}; LP-FT needs {backbone_name} with --pool {pool}"
        )
    stored_size = fp.get("preprocess", {}).get("input_size")
    if input_size is not None and stored_size is not None and stored_size != input_size:
        raise UsageError(
            f"--head-init {probe_dir}: its probes are on {stored_size}-px inputs; this run uses {input_size} px "
            f"(--input-size {stored_size})"
        )
    # the probe of this run's own training subset (same fraction and seed), never another one
    chosen = fitted_probe_dir(probe_dir, address, "logreg", float(fraction), seed)
    probe = load_probe(chosen)
    singles = probe.estimators_ if probe.kind_ == "multilabel" else [probe]
    ws, bs = [], []
    for e in singles:
        if e is None:
            raise UsageError(f"--head-init: probe {chosen.name} has an unfitted label")
        w = e.coef_ / e.scaler_scale_[None, :]
        b = e.intercept_ - (e.coef_ * (e.scaler_mean_ / e.scaler_scale_)[None, :]).sum(1)
        ws.append(w)
        bs.append(b)
    return np.concatenate(ws).astype(np.float32), np.concatenate(bs).astype(np.float32), chosen.name

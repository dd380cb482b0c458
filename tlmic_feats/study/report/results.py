"""The study's ``results.csv``: one row per finished finetuning run and per probe seed at its best
layer, and the precision the runs trained in."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from ...probes.report import aggregate, best_layers
from ...runtime.files import atomic_path
from ...runtime.rundir import layer_label
from ..arms import Arm, Run
from ..config import ROW_COLUMNS


def collect_rows(out: Path, config, probe_dir: Path) -> list[dict]:
    """One row per finished finetuning run and per probe seed at its best layer; written to
    ``results.csv``. A row names its arm (``t3.4``, ``full``, ``probe-logreg``: ``str`` of an
    :class:`~tlmic_feats.study.arms.Arm`, which :meth:`~tlmic_feats.study.arms.Arm.parse` reads back)."""
    from ..arms import run_val_auprc

    state = json.loads((out / "study.json").read_text())
    rows = []
    for run_id, rec in sorted(state["runs"].items()):
        run_dir = out / "runs" / run_id
        if rec.get("status") != "done" or not (run_dir / "metrics.json").is_file() or rec.get("steps"):
            continue  # unfinished, or a short run (the similarity search's signal, not an arm)
        run = Run.from_record(rec)
        m = json.loads((run_dir / "metrics.json").read_text())
        comp_file = run_dir / "compactness.json"
        comp = json.loads(comp_file.read_text())[0] if comp_file.is_file() else {}
        rows.append(
            {
                "stage": run.stage,
                "arm": str(run.arm),
                "address": m["address"],
                "fraction": run.fraction,
                "seed": run.seed,
                "n_train": m["n_train"],
                "val_auprc": run_val_auprc(run_dir),
                **{k: m[k] for k in ("auroc", "auroc_lo", "auroc_hi", "auprc", "auprc_lo", "auprc_hi")},
                "params": comp.get("params"),
                "macs": comp.get("macs"),
                "latency_ms": comp.get("latency_ms"),
                "steps_run": m["steps_run"],
                "best_step": m["best_step"],
                "pool": m["pool"],
                "train_seconds": m.get("train_seconds"),
                "wall_seconds": rec.get("seconds"),
                "predictions": str((run_dir / "predictions.csv").relative_to(out)),
                "precision": m.get("precision", ""),
            }
        )
    probe_rows = json.loads((Path(probe_dir) / "results.json").read_text())["rows"]
    for (model, fraction), best in sorted(best_layers(aggregate(probe_rows)).items()):
        for r in probe_rows:
            if (
                r["model"] == model
                and r["fraction"] == fraction
                and r["control"] == "none"
                and r["layer"] == best["layer"]
            ):
                rows.append(
                    {
                        "stage": "probe",
                        "arm": str(Arm("probe", name=model)),
                        "address": r["layer"],
                        "fraction": float(fraction),
                        "seed": int(r["seed"]),
                        "n_train": r["n_train"],
                        "val_auprc": r["val_auprc"],
                        **{k: r[k] for k in ("auroc", "auroc_lo", "auroc_hi", "auprc", "auprc_lo", "auprc_hi")},
                        "params": None,
                        "macs": None,
                        "latency_ms": None,
                        "steps_run": None,
                        "best_step": None,
                        "pool": config.pool,
                        "train_seconds": r["fit_seconds"],
                        "wall_seconds": None,
                        "predictions": str((Path(probe_dir) / r["predictions"]).relative_to(out)),
                        "precision": "fp64",  # scikit-learn / LightGBM on the stored features
                    }
                )
    write_results_csv(out / "results.csv", rows)
    return rows


def write_results_csv(path: Path, rows: list[dict]) -> None:
    """The study's ``results.csv``, atomically; cut points written as ``L3.10``
    (:func:`~tlmic_feats.runtime.rundir.layer_label`) so that ``pandas.read_csv`` keeps them apart."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=ROW_COLUMNS)
        w.writeheader()
        w.writerows({**r, "address": layer_label(r["address"])} for r in rows)


def training_precision(rows: list[dict]) -> str:
    """The precision(s) the study's finetuning runs trained in, e.g. ``fp32`` or ``bf16+fp32``."""
    found = sorted({r.get("precision") or "" for r in rows if r["stage"] != "probe"} - {""})
    return "+".join(found) or "n/a"

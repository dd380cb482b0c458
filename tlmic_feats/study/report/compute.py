"""What the study spent: its search's finetuning against an exhaustive search, and the disk it wrote
against the plan's estimate."""

from __future__ import annotations

from pathlib import Path

from ..arms import Arm


def compute_summary(config, backbone, calibration: dict, rows: list[dict], state: dict, manifest, out: Path) -> dict:
    """What the study's search spent against exhaustive finetuning of every cut point (halving's
    stopped runs included), and the disk the study wrote against the plan's estimate."""
    from ...finetune.budget import StepBudget
    from ..plan import distinct_truncations, estimate_disk, estimate_seconds

    n_val, n_test = int((manifest.splits == "val").sum()), int((manifest.splits == "test").sum())
    budgets = {float(f): StepBudget(**c["budget"]) for f, c in state.get("choices", {}).items() if "budget" in c}
    finetuned = [(Arm.parse(r["arm"]), r) for r in rows if r["stage"] != "probe"]
    search = [(a, r) for a, r in finetuned if r["stage"] in ("stage1", "stage2") and a.kind == "truncated"]
    runs, ft_rows = [r for _, r in search], [r for _, r in finetuned]
    fractions = sorted({r["fraction"] for r in ft_rows if r["fraction"] in budgets})

    def est(arm: Arm | str, f: float) -> float:
        return estimate_seconds(calibration, arm, budgets[f], n_val, n_test) if f in budgets else float("nan")

    search_est = sum(est(a, r["fraction"]) for a, r in search)
    search_measured = sum(float(r["wall_seconds"] or 0) for r in runs)
    paused = [r for r in state.get("runs", {}).values() if r.get("status") == "paused"]  # halving stopped them
    search_measured += sum(float(r.get("seconds") or 0) for r in paused)
    exhaustive_runs = [(f, arm) for f in fractions for arm in distinct_truncations(backbone) for _ in config.seed_list]
    exhaustive_est = sum(est(arm, f) for f, arm in exhaustive_runs)
    compute = state.get("compute", {})
    disk_est = estimate_disk(config, backbone, manifest, calibration, [a for a, _ in finetuned], budgets)
    return {
        "search": getattr(config, "search", "probe"),
        "stopped_runs": len(paused),
        "search_runs": len(runs),
        "search_measured": search_measured,
        "search_estimate": search_est,
        "exhaustive_runs": len(exhaustive_runs),
        "exhaustive_estimate": exhaustive_est,
        "extract_seconds": float(compute.get("extract_seconds", 0.0)),
        "probe_seconds": float(compute.get("probe_seconds", 0.0)),
        "other_runs": len(ft_rows) - len(runs),
        "other_measured": sum(float(r["wall_seconds"] or 0) for r in ft_rows if r not in runs),
        "disk_estimate": disk_est,
        "disk_measured": measured_disk(out, state, manifest, backbone),
    }


def measured_disk(out: Path, state: dict, manifest, backbone) -> dict:
    """Bytes on disk now, in the parts :func:`~tlmic_feats.study.estimate_disk` estimates."""
    from ...features.pixels import pixel_cache_path
    from ...runtime.paths import cache_root, disk_usage

    pre = backbone.preprocess
    parts = {
        "feature store": disk_usage(state["store"]) if state.get("store") else 0,
        "pixel cache": disk_usage(
            pixel_cache_path(
                cache_root() / "pixels", manifest.fingerprint(), pre.resize_size, pre.interpolation, pre.input_size
            )
        ),
        "probes": disk_usage(out / "probes"),
        "finetuning runs": disk_usage(out / "runs"),
    }
    parts["total"] = sum(parts.values())
    return parts

"""The cost model of a study (measured seconds per image of every network), the budgets of its
fractions, its plan, and the disk it writes."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..backbones.cutpoints import block_ends
from ..finetune.budget import StepBudget, resolve_budget
from ..runtime.files import write_json
from ..runtime.paths import cache_root, human_bytes, slug
from ..runtime.rundir import study_run_id
from .arms import finetune_config
from .config import Run, StudyConfig, default_out


def fraction_budgets(config: StudyConfig, manifest=None) -> dict[float, tuple[int, StepBudget]]:
    """``{fraction: (training images, budget)}``: every arm at one fraction gets the same number of
    optimizer steps, resolved from seed 0's subset by the finetuning budget policy."""
    from ..data.readers import load_manifest
    from ..data.subsets import nested_subsets

    manifest = manifest if manifest is not None else load_manifest(config.data)
    train = np.flatnonzero(manifest.splits == "train")
    subsets = nested_subsets(
        train, manifest.labels, manifest.label_kind, config.fractions, seed=0, patient_ids=manifest.patient_ids
    )
    out = {}
    for f in config.fractions:
        n = len(subsets[float(f)])
        out[float(f)] = (
            n,
            resolve_budget(
                n_train=n,
                batch_size=config.training.batch_size,
                epochs=config.training.epochs,
                min_steps=config.training.min_steps,
                steps=config.training.steps,
                eval_every=config.training.eval_every,
            ),
        )
    return out


def calibrate(config: StudyConfig, backbone, out: Path, *, arms: list[str] | None = None, log=None) -> dict:
    """Measured seconds per image of one training step and of one inference pass, and the bytes of
    the weights, per network (every cut point's truncation, full, the baselines), on this machine;
    kept in ``calibration.json`` so that reruns and reports share one cost model."""
    import torch

    from ..backbones.cutpoints import full_depth_address, storage_groups
    from ..finetune.losses import n_outputs_for
    from ..finetune.setup import build_model
    from ..runtime.devices import autocast, resolve_device, resolve_precision

    path = out / "calibration.json"
    cal = json.loads(path.read_text()) if path.is_file() else {}
    arms = arms or [*distinct_truncations(backbone), "full", *[b for b in config.baselines if b != "layerwise"]]
    todo = [a for a in arms if "state_bytes" not in cal.get(a, {})]
    if not todo:
        return cal
    device = resolve_device(config.device)
    precision = resolve_precision(config.training.precision, device, purpose="train")
    size = backbone.preprocess.input_size
    batch = max(2, min(4, config.training.batch_size))
    x = torch.randint(0, 256, (batch, 1, size, size), dtype=torch.uint8).to(device)
    y = torch.randint(0, 2, (batch, 1)).float().to(device)
    if log:
        log(f"study: calibrating the cost of {len(todo)} networks ({batch} images per step)")
    for arm in todo:
        run = Run("calibration", arm, 1.0, 0)
        fc = finetune_config(config, run, out, backbone)
        address = full_depth_address(backbone) if fc.truncate == "all" else fc.truncate
        torch.manual_seed(0)
        net = build_model(fc, backbone, address, n_outputs_for("binary", 2)).to(device)
        opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-4)
        times = []
        for step in range(2):  # a warm-up step, then the timed one
            t = time.perf_counter()
            with autocast(device, precision):
                loss = torch.nn.functional.binary_cross_entropy_with_logits(net(x).float(), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if step:
                times.append(time.perf_counter() - t)
        net.eval()
        with torch.inference_mode(), autocast(device, precision):
            t = time.perf_counter()
            net(x)
            infer = time.perf_counter() - t
        cal[arm] = {
            "train_s_per_img": float(np.median(times)) / batch,
            "infer_s_per_img": infer / batch,
            "state_bytes": sum(t.numel() * t.element_size() for t in net.state_dict().values()),
        }
        del net, opt
    cal["_meta"] = {"device": device, "precision": precision, "batch": batch, "input_size": size}
    cal["_alias"] = {f"t{a}": f"t{g}" for a, g in storage_groups(backbone.cut_points).items()}
    write_json(path, cal)
    return cal


def estimate_seconds(cal: dict, arm: str, budget: StepBudget, n_val: int, n_test: int) -> float:
    """Upper-bound cost of one run (no early stop): ``budget.steps`` training steps, a validation
    every ``eval_every`` steps, and the final model evaluated once more on val and test."""
    key = "full" if arm in ("scratch", "layerwise") else cal.get("_alias", {}).get(arm, arm)
    c = cal.get(key)
    if c is None:
        return float("nan")
    evaluations = -(-budget.steps // budget.eval_every)
    train = budget.steps * budget.batch_size * c["train_s_per_img"]
    return train + (evaluations * n_val + n_val + n_test) * c["infer_s_per_img"]


def checkpoint_bytes(cal: dict, arm: str) -> int:
    """Bytes of one run's ``best.pt`` (its network's state), from the calibration."""
    key = "full" if arm in ("scratch", "layerwise") else cal.get("_alias", {}).get(arm, arm)
    return int(cal.get(key, {}).get("state_bytes", 0))


def distinct_truncations(backbone) -> list[str]:
    """``t<address>`` of every distinct truncated network (aliases like ResNet's "2" = "2.4" once;
    the deepest block end is full finetuning)."""
    from ..backbones.cutpoints import full_depth_address, storage_groups

    groups = storage_groups(backbone.cut_points)
    full = groups[full_depth_address(backbone)]
    return [f"t{a}" for a, g in groups.items() if g == a and a != full]


def plan_study(config: StudyConfig, *, budget: int = 0, log: Callable[[str], None] | None = None) -> str:
    """What :func:`run_study` would do, its estimated cost and the disk it will write, from a
    measured short calibration; nothing is extracted, probed or finetuned. Returns the plan as text."""
    from ..backbones.registry import build_backbone
    from ..data.readers import load_manifest

    config.validate()
    out = Path(config.out) if config.out else default_out(config)
    manifest = load_manifest(config.data)
    backbone = build_backbone(config.backbone, config.weights, input_size=config.input_size)
    n_val, n_test = int((manifest.splits == "val").sum()), int((manifest.splits == "test").sum())
    budgets = fraction_budgets(config, manifest)
    plan_dir = out if out.is_dir() else Path(cache_root()) / "plans" / slug(out.name)
    plan_dir.mkdir(parents=True, exist_ok=True)
    cal = calibrate(config, backbone, plan_dir, log=log)
    state = json.loads((out / "study.json").read_text()) if (out / "study.json").is_file() else {}
    done = {k for k, v in state.get("runs", {}).items() if v.get("status") == "done"}
    ends = block_ends(backbone)
    blocks = [f"t{a}" for a in ends[:-1]]
    lines = [
        f"study plan: {config.backbone} ({config.weights}) on {config.data.path}; {len(manifest)} images, "
        f"fractions {', '.join(f'{f:g}' for f in config.fractions)}, {len(config.seed_list)} seed(s) "
        f"({', '.join(map(str, config.seed_list))})",
        "budget per run (every arm of a fraction alike): "
        + "; ".join(f"{f:g}: {n} images, {b.describe()}" for f, (n, b) in budgets.items()),
        f"cost model: {cal['_meta']['device']} {cal['_meta']['precision']}, measured seconds per training image "
        "(calibration.json); estimates assume no early stop",
        "",
        "| stage | run | train images | steps | estimated s | status |",
        "| --- | --- | ---: | ---: | ---: | --- |",
    ]
    total, planned = 0.0, []
    for stage, name, arm, f, s in planned_runs(config, state.get("choices", {})):
        rid = study_run_id(name, f, s)
        n, b = budgets[float(f)]
        # a choice not made yet is costed at the mean block end
        est = (
            estimate_seconds(cal, arm, b, n_val, n_test)
            if arm
            else float(np.nanmean([estimate_seconds(cal, t, b, n_val, n_test) for t in blocks]))
        )
        over = budget and len(done) + len(planned) >= budget  # the budget counts the study's runs, done ones included
        status = "done" if rid in done else ("over budget" if over else "to run")
        if status == "to run":
            total += est
            planned.append(arm or blocks[0])
        lines.append(f"| {stage} | {rid} | {n} | {b.steps} | {est:.0f} | {status} |")
    exhaustive = sum(
        estimate_seconds(cal, arm, budgets[float(f)][1], n_val, n_test) * len(config.seed_list)
        for f in config.fractions
        for arm in distinct_truncations(backbone)
    )
    disk = estimate_disk(config, backbone, manifest, cal, planned, budgets)
    lines += [
        "",
        f"to run: {len(planned)} finetuning runs, about {total / 60:.1f} min (block#/unit# are chosen after probing; "
        f"costed at the mean block end). Candidates: block ends {', '.join(ends[:-1])}; the deepest ({ends[-1]}) is "
        "full finetuning.",
        f"exhaustive search instead (every block end and unit, every fraction and seed): about {exhaustive / 60:.1f} "
        "min of finetuning.",
        "disk it will write (upper bounds, before compression): "
        + ", ".join(f"{k} {human_bytes(v)}" for k, v in disk.items() if k != "total")
        + f"; {human_bytes(disk['total'])} in all",
    ]
    return "\n".join(lines)


def planned_runs(config: StudyConfig, chosen: dict):
    """``(stage, name, arm, fraction, seed)`` of every run a study makes, in its order; ``arm`` is
    None where the choice is made after probing (``name``: ``block#1``, ``unit#1``...)."""
    for stage, key, label, n in (("1", "blocks", "block", config.top_blocks), ("2", "units", "unit", config.top_units)):
        for f in config.fractions:
            picked = chosen.get(f"{f:g}", {}).get(key)  # known once the study has made its choice
            for s in config.seed_list:
                if picked is not None:
                    yield from ((stage, f"t{a}", f"t{a}", f, s) for a in picked)
                else:
                    yield from ((stage, f"{label}#{i + 1}", None, f, s) for i in range(n))
                if stage == "1":
                    yield stage, "full", "full", f, s
                    if config.scratch:
                        yield stage, "scratch", "scratch", f, s
    for f in config.fractions:
        for s in config.seed_list:
            yield from (("baseline", b, b, f, s) for b in config.baselines)


def estimate_disk(config: StudyConfig, backbone, manifest, cal: dict, arms: list[str], budgets: dict) -> dict:
    """Bytes a study writes, as upper bounds (stores and caches compress): the feature store (float32
    features of every stored cut point for every image), the pixel cache (uint8 squares), the probe
    run (predictions and fitted probes of every cell) and the finetuning runs (``best.pt`` each, plus
    the resume state of the one in progress: weights and AdamW's two moments; every run keeps it
    with ``keep_checkpoints``), with predictions and logs."""
    from ..backbones.cutpoints import storage_groups
    from ..backbones.pooling import pooled_width

    n = len(manifest)
    n_scored = int((manifest.splits == "val").sum() + (manifest.splits == "test").sum())
    groups = storage_groups(backbone.cut_points)
    widths = sum(
        pooled_width(cp.channels, config.pool) for cp in backbone.cut_points if groups[cp.address] == cp.address
    )
    pre = backbone.preprocess
    cells = len(backbone.cut_points) * len(config.probe_models) * len(config.fractions) * len(config.seed_list)
    widest = max(pooled_width(cp.channels, config.pool) for cp in backbone.cut_points)
    per_run_files = n_scored * 60 + 100_000  # predictions.csv, history, curves.png, metrics, compactness
    weights = [checkpoint_bytes(cal, a) for a in arms]
    resume = sum(3 * w for w in weights) if config.keep_checkpoints else 3 * max(weights, default=0)
    disk = {
        "feature store": n * widths * 4,
        "pixel cache": n * pre.resize_size**2,
        "probes": cells * (n_scored * 40 + widest * 8 * 2 + 20_000),
        "finetuning runs": sum(weights) + resume + len(arms) * per_run_files,
    }
    disk["total"] = sum(disk.values())
    return disk

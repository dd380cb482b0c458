"""The cost model of a study (measured on this machine: optimizer steps, evaluations, checkpoint
writes and per-run fixed costs of every network, robust to a busy machine), the budgets of its
fractions, its plan (what it will run, the minutes it will take and what dominates them, the small
samples it rests on), and the disk it writes."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..backbones.cutpoints import block_ends
from ..finetune.budget import StepBudget, resolve_budget
from ..runtime.files import write_json
from ..runtime.paths import cache_root, human_bytes, slug
from ..runtime.rundir import study_run_id
from .arms import Arm, Run, finetune_config
from .config import SEARCHES, StudyConfig, default_out


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


# The cost model's version: bump it when what is measured, or how, changes, so that an older
# calibration.json is measured again instead of trusted.
CALIBRATION_VERSION = 2
TIMED_STEPS = (3, 5)  # timed optimizer steps per network and batch size (after a warm-up step): at least, at most
TIMED_SECONDS = 1.5  # a network's timed steps go on (up to the maximum) until they took this long
MAC_BAND = 2.0  # a timed network's seconds may lie within this factor of the family's fit against MACs
LATENCY_CALLS = 35  # compactness (seed 0): cpu_latency_ms's 5 warm-up and 30 timed calls, per network measured


def calibrate(config: StudyConfig, backbone, out: Path, *, arms: list[Arm | str] | None = None, log=None) -> dict:
    """The study's cost model, measured on this machine and kept in ``calibration.json`` so that
    reruns and reports share it, keyed by each network's arm name (``t3``, ``full``, ``cbr-small``...).
    Per network (every distinct truncation, full, the baselines; ``arms``: only these):

    - ``step_s``: seconds of one optimizer step (augmentation, forward, loss, backward, AdamW) at
      the largest batch the study's runs use (and at the smallest, when under half of it), the
      median of 3 to 5 steps after a warm-up step, so that one stall of the machine does not
      become the estimate;
    - ``infer_s_per_img``: seconds per image of an evaluation pass at the evaluation's batch size
      (median of 3 passes);
    - ``build_s``, ``macs``, ``latency_s`` (one image, median of 5 calls), ``flop_count_s``, and the
      bytes and measured write seconds of ``best.pt`` and of the resume checkpoint ``last.pt``;

    and ``_fixed``: what every run pays whatever its network (reading the data's manifest and the
    backbone's weights, the validation metrics of each evaluation, the bootstrap CIs of its test
    metrics, its curves figure). The block
    ends, full and the baselines are timed; the unit-level truncations are built and their MACs
    counted, and their times come from the timed ones by :func:`fit_family`, which also bounds
    the timed ones against each other.

    A calibration of another :data:`CALIBRATION_VERSION`, device, precision, input size or batch
    sizes is measured again. The machine's load average at calibration is recorded with it."""
    import os

    from ..backbones.cutpoints import storage_groups
    from ..data.readers import load_manifest
    from ..runtime.devices import resolve_device, resolve_precision

    manifest = load_manifest(config.data)
    batches = [b.batch_size for _, b in fraction_budgets(config, manifest).values()]
    device = resolve_device(config.device)
    meta = {
        "version": CALIBRATION_VERSION,
        "device": device,
        "precision": resolve_precision(config.training.precision, device, purpose="train"),
        "input_size": backbone.preprocess.input_size,
        "batches": sorted({max(batches)} | ({min(batches)} if 2 * min(batches) <= max(batches) else set())),
    }
    path = out / "calibration.json"
    cal = json.loads(path.read_text()) if path.is_file() else {}
    if {k: cal.get("_meta", {}).get(k) for k in meta} != meta:
        cal = {}  # an older cost model, or one of other settings: measured again
    groups = storage_groups(backbone.cut_points)
    if arms:
        networks = [Arm.parse(a) for a in arms]
    else:  # every network the study can train, once (layer-wise finetuning trains the full one)
        baselines = [Arm("baseline", name=b).network for b in config.baselines]
        networks = list(dict.fromkeys([*map(Arm.parse, distinct_truncations(backbone)), Arm("full"), *baselines]))
    todo = [a for a in networks if str(a) not in cal]
    timed = {Arm("full"), *(Arm("truncated", groups[a]) for a in block_ends(backbone)[:-1])}
    if not todo and "_fixed" in cal:
        return cal
    n_val, n_test = int((manifest.splits == "val").sum()), int((manifest.splits == "test").sum())
    t0 = time.perf_counter()
    if log:
        log(
            f"study: calibrating the cost of {len(todo)} networks (repeated steps at batch "
            f"{' and '.join(map(str, meta['batches']))})"
        )
    for arm in todo:
        time_it = arm in timed or arm.kind != "truncated"
        cal[str(arm)] = _measure_network(config, arm, backbone, out, meta, max(n_val, n_test, 1), timed=time_it)
    if "_fixed" not in cal:
        cal["_fixed"] = _measure_fixed(config, manifest, out)
    cal["_meta"] = {
        **meta,
        "load_average": round(os.getloadavg()[0], 2),
        "cores": os.cpu_count(),
        "seconds": round(time.perf_counter() - t0 + cal.get("_meta", {}).get("seconds", 0.0), 1),
    }
    cal["_alias"] = {str(Arm("truncated", a)): str(Arm("truncated", g)) for a, g in groups.items()}
    cal["_family"] = [*distinct_truncations(backbone), str(Arm("full"))]  # shallow to deep
    fit_family(cal)
    write_json(path, cal)
    if log:
        log(f"study: calibrated in {time.perf_counter() - t0:.0f} s (load average {cal['_meta']['load_average']})")
    return cal


def _repeated(fn, device: str, *, least: int, most: int, seconds: float = TIMED_SECONDS) -> tuple[float, float]:
    """``(median seconds, max / min)`` of ``fn()`` over ``least`` to ``most`` timed calls after one
    untimed warm-up call; calls go on past ``least`` while the timed ones took under ``seconds``."""
    import torch

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    fn()
    sync()
    times: list[float] = []
    while len(times) < least or (len(times) < most and sum(times) < seconds):
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    return float(np.median(times)), float(max(times) / max(min(times), 1e-9))


def _measure_network(
    config: StudyConfig, arm: Arm, backbone, out: Path, meta: dict, n_eval: int, *, timed: bool = True
) -> dict:
    """One network's measured costs (see :func:`calibrate`); without ``timed``, only what costs
    little to measure (building it, its MACs and the bytes of its state)."""
    import torch

    from ..backbones.cutpoints import full_depth_address
    from ..backbones.preprocess import center_crop
    from ..finetune.augment import augment_batch
    from ..finetune.compactness import count_macs
    from ..finetune.losses import n_outputs_for
    from ..finetune.setup import build_model
    from ..runtime.devices import autocast
    from ..runtime.files import save_torch

    device, precision, size = meta["device"], meta["precision"], meta["input_size"]
    resize = backbone.preprocess.resize_size
    fc = finetune_config(config, Run("calibration", arm, 1.0, 0), out, backbone)
    address = full_depth_address(backbone) if fc.truncate == "all" else fc.truncate
    t = time.perf_counter()
    torch.manual_seed(0)
    net = build_model(fc, backbone, address, n_outputs_for("binary", 2)).to(device)
    build_s = time.perf_counter() - t
    c: dict = {"build_s": build_s, "timed": timed}
    one = torch.rand(1, 1, size, size).mul(255).to(device)
    net.eval()
    t = time.perf_counter()
    c["macs"] = count_macs(net, one)
    c["flop_count_s"] = time.perf_counter() - t
    state = net.state_dict()
    c["state_bytes"] = sum(v.numel() * v.element_size() for v in state.values())
    if not timed:
        return c
    with torch.inference_mode(), autocast(device, precision):
        c["latency_s"], _ = _repeated(lambda: net(one), device, least=5, most=5)
    net.train()
    opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-4)
    gen = torch.Generator().manual_seed(0)
    c["step_s"], c["step_spread"] = {}, {}
    for batch in meta["batches"]:
        x = torch.randint(0, 256, (batch, 1, resize, resize), dtype=torch.uint8).to(device)
        y = torch.randint(0, 2, (batch, 1)).float().to(device)

        def step(x=x, y=y):
            xb = augment_batch(x, size, fc.augment, gen) if fc.augment else center_crop(x, size)
            with autocast(device, precision):
                logits = net(xb.contiguous(memory_format=torch.channels_last))
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        c["step_s"][str(batch)], c["step_spread"][str(batch)] = _repeated(
            step, device, least=TIMED_STEPS[0], most=TIMED_STEPS[1]
        )
    net.eval()
    n = max(1, min(max(config.training.batch_size, 64), n_eval))  # outputs.predict_logits' batch
    xi = torch.randint(0, 256, (n, 1, resize, resize), dtype=torch.uint8).to(device)
    with torch.inference_mode(), autocast(device, precision):
        s, _ = _repeated(
            lambda: net(center_crop(xi, size).contiguous(memory_format=torch.channels_last)), device, least=3, most=3
        )
    c["infer_s_per_img"] = s / n
    tmp = out / ".calibration.pt"
    t = time.perf_counter()
    save_torch({"model": state}, tmp)
    c["best_write_s"] = time.perf_counter() - t
    t = time.perf_counter()
    save_torch({"model": state, "optimizer": opt.state_dict(), "state": "{}"}, tmp)
    c["last_write_s"] = time.perf_counter() - t
    c["last_bytes"] = tmp.stat().st_size
    tmp.unlink()
    return c


def _measure_fixed(config: StudyConfig, manifest, out: Path) -> dict:
    """What every run pays whatever its network: its set-up (the data's manifest and the backbone
    with its weights, read again by every run), the validation metrics of every evaluation, and its
    outputs (the bootstrap CIs of the test metrics and the curves figure), timed on this study's
    data."""
    import warnings

    from ..backbones.registry import build_backbone
    from ..data.readers import load_manifest
    from ..finetune.losses import n_outputs_for, scores_from_logits
    from ..finetune.outputs import plot_curves
    from ..metrics.scores import UndefinedMetricWarning, bootstrap, choose_thresholds, evaluate

    t = time.perf_counter()
    load_manifest(config.data)
    build_backbone(config.backbone, config.weights, seed=0, input_size=config.input_size)
    setup_s = time.perf_counter() - t
    kind, names = manifest.label_kind, list(manifest.label_names)
    width = n_outputs_for(kind, len(names))
    rng = np.random.default_rng(0)
    y_val = manifest.labels[manifest.splits == "val"]
    metrics_s = 0.0
    if len(y_val):  # every evaluation scores validation (loop._validate)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UndefinedMetricWarning)
            s_val = scores_from_logits(kind, rng.normal(size=(len(y_val), width)))
            metrics_s, _ = _repeated(lambda: evaluate(y_val, s_val, kind, label_names=names), "cpu", least=3, most=3)
    y = manifest.labels[manifest.splits == "test"]
    t = time.perf_counter()
    if len(y):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UndefinedMetricWarning)
            s = scores_from_logits(kind, rng.normal(size=(len(y), width)))
            bootstrap(y, s, kind, thresholds=choose_thresholds(y, s, kind), n_resamples=config.bootstrap, seed=0)
    history = [
        {"step": i, "train_loss": 1.0, "val_loss": 1.0, "val_auroc": 0.5, "val_auprc": 0.5, "best": i == 3}
        for i in range(1, 21)
    ]
    plot_curves(history, out / ".calibration.png", "auprc")
    (out / ".calibration.png").unlink(missing_ok=True)
    return {"setup_s": setup_s, "outputs_s": time.perf_counter() - t, "val_metrics_s": metrics_s}


def fit_family(cal: dict) -> dict:
    """The sanity bound across the backbone's networks (``_family``: its distinct truncations,
    shallow to deep, then full), in place. Their step and inference seconds are fitted against
    their MACs robustly (Theil-Sen: ``seconds = a + b * MACs``, the median of pairwise slopes, so
    that a fixed cost per step is allowed for); a measured value is clipped to within
    :data:`MAC_BAND` of the fit (a stall during one network's timing makes an outlier, not the
    estimate); the sequence is made non-decreasing in depth (a truncated network computes a prefix
    of every deeper one, so it cannot cost more: isotonic regression, pool adjacent violators); and
    the networks that were not timed (unit-level cut points) are interpolated by their MACs between
    the timed ones. Writes ``train_step_s``, ``infer_s``, ``latency_s`` and the write seconds of
    the untimed networks; a network outside the family keeps its own measurement."""
    for a, c in cal.items():
        if not a.startswith("_") and c.get("timed"):
            c["train_step_s"] = dict(c["step_s"])
            c["infer_s"] = c["infer_s_per_img"]
    family = [a for a in cal.get("_family", []) if a in cal]
    timed = [a for a in family if cal[a].get("timed")]
    if not timed:
        return cal
    x = np.array([cal[a]["macs"] for a in timed], float)
    x_all = np.array([cal[a]["macs"] for a in family], float)

    def spread(values: np.ndarray) -> np.ndarray:
        """The bounded values of the timed networks interpolated to every network of the family."""
        if len(values) >= 3:
            fit = _theil_sen(x, values)
            values = _isotonic(np.clip(values, fit / MAC_BAND, fit * MAC_BAND))
        else:
            values = _isotonic(values)
        return np.interp(x_all, x, values)

    for batch in cal[timed[-1]]["step_s"]:
        for a, v in zip(family, spread(np.array([cal[a]["step_s"][batch] for a in timed])), strict=True):
            cal[a].setdefault("train_step_s", {})[batch] = float(v)
    for key, target in (("infer_s_per_img", "infer_s"), ("latency_s", "latency_s")):
        for a, v in zip(family, spread(np.array([cal[a][key] for a in timed])), strict=True):
            if target == "infer_s" or not cal[a].get("timed"):
                cal[a][target] = float(v)
    b, b_all = np.array([cal[a]["state_bytes"] for a in timed], float), [cal[a]["state_bytes"] for a in family]
    for key in ("best_write_s", "last_write_s"):
        values = np.array([cal[a][key] for a in timed])
        for a, v in zip(family, np.interp(b_all, b[np.argsort(b)], values[np.argsort(b)]), strict=True):
            cal[a].setdefault(key, float(v))
    return cal


def _theil_sen(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The Theil-Sen line through ``(x, y)`` (scipy's: the median of pairwise slopes, then the median
    intercept) evaluated at ``x``, floored at a tenth of the smallest ``y`` so that it stays positive."""
    from scipy.stats import theilslopes

    slope, intercept, _, _ = theilslopes(y, x, method="joint") if len(set(x)) > 1 else (0.0, float(np.median(y)), 0, 0)
    return np.maximum(intercept + slope * x, 0.1 * y.min())


def _isotonic(y: np.ndarray) -> np.ndarray:
    """The least-squares non-decreasing sequence closest to ``y`` (scikit-learn's isotonic regression)."""
    from sklearn.isotonic import IsotonicRegression

    return IsotonicRegression().fit_transform(np.arange(len(y)), np.asarray(y, float))


def _network(cal: dict, arm: Arm | str) -> dict | None:
    """The calibration entry of the network ``arm`` (or the arm so named) trains (scratch and
    layer-wise: the full one)."""
    name = str(Arm.parse(arm).network)
    return cal.get(cal.get("_alias", {}).get(name, name))


def step_seconds(c: dict, batch: int) -> float:
    """Seconds of one optimizer step at ``batch``: a line through the measured batch sizes (a fixed
    cost per step plus a cost per image), the cost per image alone when one size was measured."""
    points = sorted((int(b), s) for b, s in c["train_step_s"].items())
    (b0, s0), (b1, s1) = points[0], points[-1]
    if b1 == b0:
        return s1 * batch / b1
    per_image = max(0.0, (s1 - s0) / (b1 - b0))
    return max(0.0, s0 + per_image * (batch - b0))


def estimate_parts(
    cal: dict, arm: Arm | str, budget: StepBudget, n_val: int, n_test: int, *, compactness: bool = False
) -> dict[str, float]:
    """Seconds of one run (no early stop), by part: ``training`` (``budget.steps`` optimizer steps),
    ``evaluations`` (a validation pass, ``last.pt`` and, at most, ``best.pt`` every ``eval_every``
    steps), ``fixed`` (set-up: manifest, backbone weights, building the network; the final
    validation and test pass, bootstrap CIs and curves) and ``compactness`` (seed 0: MACs and
    CPU latency of the network and of the full one). NaN parts when ``arm``'s network was not
    calibrated; ``arm`` may be given by its name (``t3``, ``full``...)."""
    arm = Arm.parse(arm)
    c, full, fixed = _network(cal, arm), cal.get("full"), cal.get("_fixed")
    if c is None or "train_step_s" not in c or fixed is None:
        return dict.fromkeys(("training", "evaluations", "fixed", "compactness"), float("nan"))
    evaluations = -(-budget.steps // budget.eval_every)
    parts = {
        "training": budget.steps * step_seconds(c, budget.batch_size),
        "evaluations": evaluations
        * (n_val * c["infer_s"] + fixed.get("val_metrics_s", 0.0) + c["last_write_s"] + c["best_write_s"]),
        "fixed": fixed["setup_s"] + c["build_s"] + (n_val + n_test) * c["infer_s"] + fixed["outputs_s"],
        "compactness": 0.0,
    }
    if compactness:

        def measured(e: dict) -> float:
            return LATENCY_CALLS * e["latency_s"] + e["flop_count_s"]

        # compactness_pair measures the full network beside any other (outputs.compactness_pair)
        also_full = full is not None and arm.kind != "scratch" and (c is not full or arm.name == "layerwise")
        parts["compactness"] = measured(c) + (full["build_s"] + measured(full) if also_full else 0.0)
    return parts


def estimate_seconds(
    cal: dict, arm: Arm | str, budget: StepBudget, n_val: int, n_test: int, *, compactness: bool = False
) -> float:
    """Seconds of one run (no early stop): the sum of :func:`estimate_parts`."""
    return float(sum(estimate_parts(cal, arm, budget, n_val, n_test, compactness=compactness).values()))


def checkpoint_bytes(cal: dict, arm: Arm | str) -> int:
    """Bytes of one run's ``best.pt`` (its network's state), from the calibration."""
    return int((_network(cal, arm) or {}).get("state_bytes", 0))


def distinct_truncations(backbone) -> list[str]:
    """The names (``t<address>``, as ``calibration.json`` keys them) of every distinct truncated
    network: aliases like ResNet's "2" = "2.4" once; the deepest block end is full finetuning."""
    from ..backbones.cutpoints import full_depth_address, storage_groups

    groups = storage_groups(backbone.cut_points)
    full = groups[full_depth_address(backbone)]
    return [str(Arm("truncated", a)) for a, g in groups.items() if g == a and a != full]


def plan_study(config: StudyConfig, *, budget: int = 0, log: Callable[[str], None] | None = None) -> str:
    """What :func:`run_study` would do, its estimated cost and the disk it will write, from a
    measured short calibration; nothing is extracted, probed or finetuned. Returns the plan as text."""
    from ..backbones.registry import build_backbone
    from ..data.readers import load_manifest
    from ..data.sample_size import small_sample_warnings

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
    blocks = [Arm("truncated", a) for a in ends[:-1]]
    lines = [
        f"study plan: {config.backbone} ({config.weights}) on {config.data.path}; {len(manifest)} images, "
        f"fractions {', '.join(f'{f:g}' for f in config.fractions)}, {len(config.seed_list)} seed(s) "
        f"({', '.join(map(str, config.seed_list))})",
        "budget per run (every arm of a fraction alike): "
        + "; ".join(f"{f:g}: {n} images, {b.describe()}" for f, (n, b) in budgets.items()),
        describe_calibration(cal),
        "",
        "| stage | run | train images | steps | estimated s | status |",
        "| --- | --- | ---: | ---: | ---: | --- |",
    ]
    total, total_early, planned, planned_ids = 0.0, 0.0, [], set()
    by_kind: dict[str, float] = {}
    by_part: dict[str, float] = {}
    units = [a.address for a in map(Arm.parse, distinct_truncations(backbone)) if "." in a.address]
    per_block = [sum(u.partition(".")[0] == e for u in units) for e in ends[:-1]]
    caps = {"max_blocks": len(blocks), "max_units": max(per_block, default=0)}
    resolved = {f: b for f, (_, b) in budgets.items()}
    runs = planned_runs(config, state.get("choices", {}), **caps, candidates=ends[:-1], budgets=resolved)
    for p in runs:
        rid, arm, f = p.id, p.arm, p.fraction
        n, b = budgets[float(f)]
        b = replace(b, steps=p.steps) if p.steps else b
        parts, est_early = _estimate(cal, config, p, b, blocks, n_val, n_test)
        est = sum(parts.values())
        new = not p.resumed and rid not in planned_ids
        # the budget counts the study's runs, done ones too
        over = budget and new and len(done) + len(planned) >= budget
        status = "done" if rid in done else ("over budget" if over else "to run")
        if status == "to run":
            total += est
            total_early += est_early
            if new:
                planned.append(arm if arm is not None else blocks[0])
                planned_ids.add(rid)
            kind = "similarity (short runs)" if p.stage == "similarity" else arm_kind(arm)
            by_kind[kind] = by_kind.get(kind, 0.0) + est
            for k, v in parts.items():
                by_part[k] = by_part.get(k, 0.0) + v
        steps = f"{b.steps}" + (" more" if p.resumed else "")
        lines.append(f"| {p.stage} | {rid} | {n} | {steps} | {est:.0f} | {status} |")
    exhaustive = sum(
        estimate_seconds(cal, arm, budgets[float(f)][1], n_val, n_test) * len(config.seed_list)
        for f in config.fractions
        for arm in distinct_truncations(backbone)
    )
    searches = {
        name: _search_seconds(replace(config, search=name), cal, budgets, blocks, caps, ends, n_val, n_test)
        for name in SEARCHES
    }
    disk = estimate_disk(config, backbone, manifest, cal, planned, budgets)
    lines += [
        "",
        f"to run: {len(planned)} finetuning runs, about {total / 60:.1f} min without early stopping, "
        f"{total_early / 60:.1f} min if every run stopped at its first chance (patience {config.training.patience} "
        "evaluations); extraction and probing come first and are not counted. By arm: "
        + _shares(by_kind, total)
        + "; by part: "
        + _shares({PARTS[k]: v for k, v in by_part.items()}, total)
        + ".",
        "(block#/unit# are chosen by the search; costed at the mean block end). Candidates: block ends "
        f"{', '.join(ends[:-1])}; the deepest ({ends[-1]}) is full finetuning.",
        f"every truncation instead (every block end and every unit, every fraction and seed): about "
        f"{exhaustive / 60:.1f} min of finetuning.",
        "the searches (--search; stage 1 and 2 with full finetuning, the similarity search's short runs, halving's "
        "rungs; no early stop): "
        + ", ".join(
            f"{k} {v / 60:.1f} min" + (" (this study)" if k == config.search else "") for k, v in searches.items()
        )
        + ".",
        "disk it will write (upper bounds, before compression): "
        + ", ".join(f"{k} {human_bytes(v)}" for k, v in disk.items() if k != "total")
        + f"; {human_bytes(disk['total'])} in all",
    ]
    warnings = small_sample_warnings(manifest, config.fractions, config.seed_list)
    if warnings:
        lines += ["", *warnings]
    return "\n".join(lines)


def _estimate(cal: dict, config: StudyConfig, p: Planned, b: StepBudget, blocks: list[Arm], n_val: int, n_test: int):
    """A planned run's estimated seconds by part, and if it stopped at its first chance; a choice not
    made yet is costed at the mean block end."""
    candidates = [p.arm] if p.arm is not None else blocks
    compactness = p.seed == 0 and p.stage != "similarity" and not p.resumed
    parts = {
        k: float(np.nanmean([estimate_parts(cal, t, b, n_val, n_test, compactness=compactness)[k] for t in candidates]))
        for k in PARTS
    }
    # the earliest early stop: patience + 1 evaluations without improvement after the first
    earliest = replace(b, steps=min(b.steps, (config.training.patience + 1) * b.eval_every))
    early = float(
        np.nanmean([estimate_seconds(cal, t, earliest, n_val, n_test, compactness=compactness) for t in candidates])
    )
    return parts, early


def _search_seconds(config: StudyConfig, cal, budgets, blocks, caps, ends, n_val, n_test) -> float:
    """Estimated seconds of a search's finetuning (stages 1 and 2 with full finetuning and scratch,
    the similarity search's short runs; no baselines, no early stop), none of it done yet."""
    resolved = {f: b for f, (_, b) in budgets.items()}
    total = 0.0
    for p in planned_runs(config, {}, **caps, candidates=ends[:-1], budgets=resolved):
        if p.stage == "baseline":
            continue
        b = budgets[float(p.fraction)][1]
        parts, _ = _estimate(cal, config, p, replace(b, steps=p.steps) if p.steps else b, blocks, n_val, n_test)
        total += sum(parts.values())
    return total


PARTS = {
    "training": "training steps",
    "evaluations": "evaluations and checkpoints",
    "fixed": "per-run set-up and final val/test pass",
    "compactness": "compactness timing (seed 0)",
}


def arm_kind(arm: Arm | None) -> str:
    """The kind of arm a plan groups a run under: truncated (a choice not made yet too), full,
    scratch or baselines."""
    if arm is None:
        return "truncated"
    return "baselines" if arm.kind == "baseline" else arm.kind


def _shares(seconds: dict[str, float], total: float) -> str:
    """``"baselines 62%, truncated 20%, ..."``, largest first."""
    ranked = sorted(seconds.items(), key=lambda kv: -kv[1])
    return ", ".join(f"{k} {100 * v / total:.0f}%" for k, v in ranked) if total > 0 else "nothing"


def describe_calibration(cal: dict) -> str:
    """One line on the cost model: where and how it was measured, and how busy the machine was."""
    meta = cal["_meta"]
    load, cores = meta.get("load_average"), meta.get("cores") or 1
    busy = (
        f"; the machine was busy (load average {load} on {cores} cores): estimates hold for that load"
        if load is not None and load > cores
        else (f"; load average {load} on {cores} cores" if load is not None else "")
    )
    return (
        f"cost model: {meta['device']} {meta['precision']} at {meta['input_size']} px, measured on this machine "
        f"(calibration.json, version {meta.get('version', 1)}): per network the median of repeated optimizer steps "
        f"at batch {' and '.join(map(str, meta.get('batches', [])))} after a warm-up, bounded across the networks by "
        f"their MACs, plus the measured evaluations, checkpoint writes and per-run fixed costs{busy}"
    )


@dataclass(frozen=True)
class Planned:
    """One row of a study's plan: a run (``arm`` None where the search chooses it later; ``name``
    then says which: ``block#1``, ``unit#1``...), or a segment of one: ``steps`` (0: the fraction's
    budget) and ``resumed`` (a halving run continued from its previous rung)."""

    stage: str
    name: str
    arm: Arm | None
    fraction: float
    seed: int
    steps: int = 0
    resumed: bool = False

    @property
    def id(self) -> str:
        return study_run_id(self.name, self.fraction, self.seed) + (
            f"-b{self.steps}" if self.stage == "similarity" else ""
        )


def planned_runs(
    config: StudyConfig,
    chosen: dict,
    *,
    max_blocks: int | None = None,
    max_units: int | None = None,
    candidates: list[str] | None = None,
    budgets: dict | None = None,
):
    """Every :class:`Planned` run (or halving segment) a study makes, in its order. ``chosen``: the
    choices a study recorded (``study.json``); ``max_blocks`` and ``max_units``: the candidates
    there are (``top_blocks`` beyond them finetunes them all); ``candidates``: the block ends but
    the deepest (exhaustive and halving name them); ``budgets``: ``{fraction: StepBudget}``
    (halving's rungs and the similarity search's short runs need them)."""
    from .search import halving_schedule, short_steps

    search = config.search
    n_blocks = min(config.top_blocks, max_blocks) if max_blocks is not None else config.top_blocks
    n_units = min(config.top_units, max_units) if max_units is not None else config.top_units
    if search == "exhaustive":
        n_blocks, n_units = (max_blocks or n_blocks), (max_units if config.top_units else 0) or n_units
    blocks = list(candidates or [])
    for f in config.fractions:
        budget = (budgets or {}).get(float(f))
        if search in ("similarity", "exhaustive") and budget is not None:
            short = short_steps(budget.steps, budget.eval_every)
            for s in config.seed_list:
                yield Planned("similarity", "full", Arm("full"), f, s, short)
    for stage, key, label, n in (("1", "blocks", "block", n_blocks), ("2", "units", "unit", n_units)):
        for f in config.fractions:
            picked = chosen.get(f"{f:g}", {}).get(key)  # known once the study has made its choice
            budget = (budgets or {}).get(float(f))
            halving = search == "halving" and picked is None and budget is not None
            schedule = []
            if halving:
                pool = len(blocks) if stage == "1" and blocks else (max_units or n) if stage == "2" else n
                schedule = halving_schedule(max(pool, 1), n, budget.steps, budget.eval_every) if n else []
            for s in config.seed_list:
                if picked is not None:
                    yield from (Planned(stage, str(a), a, f, s) for a in (Arm("truncated", x) for x in picked))
                elif schedule:
                    before = 0
                    for j, (steps, count) in enumerate(schedule):
                        for i in range(count):
                            known = stage == "1" and j == 0 and i < len(blocks)
                            arm = Arm("truncated", blocks[i]) if known else None
                            name = str(arm) if known else f"{label}#{i + 1}"
                            yield Planned(stage, name, arm, f, s, steps - before, resumed=j > 0)
                        before = steps
                elif search == "exhaustive" and stage == "1" and blocks:
                    yield from (Planned(stage, f"t{a}", Arm("truncated", a), f, s) for a in blocks)
                else:
                    yield from (Planned(stage, f"{label}#{i + 1}", None, f, s) for i in range(n))
                if stage == "1":
                    yield Planned(stage, "full", Arm("full"), f, s)
                    if config.scratch:
                        yield Planned(stage, "scratch", Arm("scratch"), f, s)
    for f in config.fractions:
        for s in config.seed_list:
            yield from (Planned("baseline", b, Arm("baseline", name=b), f, s) for b in config.baselines)


def estimate_disk(config: StudyConfig, backbone, manifest, cal: dict, arms: list[Arm], budgets: dict) -> dict:
    """Bytes a study writes, as upper bounds (stores and caches compress): the feature store (float32
    features of every stored cut point for every image), the pixel cache (squares of uint8, or float32 for
    torchxrayvision's pixels), the probe
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
        "pixel cache": n * pre.resize_size**2 * pre.pixel_dtype.itemsize,
        "probes": cells * (n_scored * 40 + widest * 8 * 2 + 20_000),
        "finetuning runs": sum(weights) + resume + len(arms) * per_run_files,
    }
    disk["total"] = sum(disk.values())
    return disk

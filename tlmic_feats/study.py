"""``tlmic study``: the paper's experiment as one resumable command, with a probe-guided search.

1. Extract every cut point once (an existing store of the same inputs is reused).
2. Probe every cut point with both probe models, at every fraction and seed.
3. Search, stage 1: per fraction, rank the block ends (all but the deepest, which full finetuning
   covers) by the probes' mean validation AUPRC; finetune truncated at the top ``top_blocks``, plus
   full finetuning and training from scratch, for every seed.
4. Search, stage 2: per fraction, the best block is the stage-1 truncated arm with the highest mean
   validation AUPRC of its finetuned models; its unit-level cut points (those not equal to the block
   end) are ranked by probe validation AUPRC and the top ``top_units`` are finetuned.
5. Baselines (``baselines``): the CBR networks of Transfusion (from scratch), the TransFusion-style
   hybrid, and layer-wise finetuning (bottom half frozen, the rest at a tenth of the learning rate).

Every choice reads validation data only; a finetuned model's test labels are read once, by its own
final evaluation, and by the report. The study directory records everything::

    study.json        config, progress, the choices made and why, compute spent
    calibration.json  measured seconds per training image of each network (the cost model)
    probes/           the probe run (tlmic probe's outputs)
    runs/<run>/       one finetuning run each (tlmic finetune's outputs)
    results.csv       one row per finished run: arm, fraction, seed, val and test metrics, cost
    report.md, report.html, figures/

A rerun skips finished runs and resumes unfinished ones. ``budget`` caps finetuning runs (stage 1
first, then stage 2, then baselines); ``max_minutes`` stops starting new runs after that long;
:func:`plan_study` prints what would run and its estimated cost without running anything.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from .budget import MIN_STEPS, StepBudget, resolve_budget
from .data.readers import DataConfig
from .errors import SubsetTooSmallError, UsageError, check_choice
from .paths import cache_root, slug

BASELINES = ("cbr-tiny", "cbr-small", "cbr-larget", "cbr-largew", "hybrid", "layerwise")
# Which arms start their head from the probe of their cut point (LP-FT). Measured on the phantom
# (docs/finetune-recipe.md): it lifts truncated networks most (5% of the data: val AUROC 0.914 ->
# 0.977) and lowered full finetuning's (0.967 -> 0.932), hence "truncated" by default.
LPFT_ARMS = ("truncated", "all", "none")


@dataclass(frozen=True)
class StudyConfig:
    """A study. Recorded in ``study.json``; a rerun must use the same values."""

    data: DataConfig
    backbone: str = "resnet50"
    weights: str = "imagenet"
    fractions: tuple[float, ...] = (0.05, 0.1, 1.0)
    seeds: int = 3
    out: str = ""
    top_blocks: int = 2
    top_units: int = 2
    baselines: tuple[str, ...] = BASELINES
    epochs: int = 20
    steps: int = 0  # optimizer steps per run; 0: the default budget (tlmic_feats.budget), one per fraction
    min_steps: int = MIN_STEPS
    eval_every: int = 0
    batch_size: int = 32
    lr: float = 1e-3
    patience: int = 5  # evaluations
    pool: str = "avg"  # the store's pooling, and every finetuned network's
    input_size: int = 0  # 0: the weights' own
    store: str = ""
    probe_models: tuple[str, ...] = ("logreg", "lightgbm")
    bootstrap: int = 1000
    precision: str = "auto"
    device: str = "auto"
    cluster: str = ""
    layerwise_lr_mult: float = 0.1
    lpft: str = "truncated"  # arms whose head starts from their cut point's probe: truncated, all, none
    keep_checkpoints: bool = False

    def validate(self) -> None:
        for b in self.baselines:
            check_choice("--baselines", b, BASELINES)
        check_choice("--lpft", self.lpft, LPFT_ARMS)
        for f in self.fractions:
            if not 0 < f <= 1:
                raise UsageError(f"fraction {f} is not in (0, 1]; e.g. --fractions 0.05,0.1,1.0")
        if self.seeds < 1 or self.epochs < 1 or self.top_blocks < 1 or self.top_units < 0:
            raise UsageError(
                f"--seeds, --epochs and --top-blocks must be >= 1 and --top-units >= 0 (got {self.seeds}, "
                f"{self.epochs}, {self.top_blocks}, {self.top_units})"
            )

    @property
    def results_key(self) -> dict:
        """What decides the study's results (where and how fast it runs does not)."""
        record = json.loads(json.dumps(asdict(self)))
        record.pop("cluster")  # the same results wherever it runs (tested); store and device are recorded by runs
        record.pop("keep_checkpoints")  # what is kept, not what is computed

        return record


@dataclass(frozen=True)
class Run:
    """One finetuning run of the study."""

    stage: str
    arm: str  # "t<address>", "full", "scratch", a CBR name, "hybrid", "layerwise"
    fraction: float
    seed: int

    @property
    def id(self) -> str:
        return f"{self.arm}-f{self.fraction:g}-s{self.seed}"


@dataclass
class StudyResult:
    out: Path
    rows: list[dict]
    choices: dict
    not_run: list[str] = field(default_factory=list)
    report: Path | None = None


def default_out(config: StudyConfig) -> Path:
    return cache_root() / "studies" / f"{slug(Path(config.data.path).name)}-{config.backbone}"


# --- the arms -----------------------------------------------------------------------------------------


def fraction_budgets(config: StudyConfig, manifest=None) -> dict[float, tuple[int, StepBudget]]:
    """``{fraction: (training images, budget)}``: every arm at one fraction gets the same number of
    optimizer steps, resolved from seed 0's subset by the finetuning budget policy."""
    from .data.readers import load_manifest
    from .subsets import nested_subsets

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
                batch_size=config.batch_size,
                epochs=config.epochs,
                min_steps=config.min_steps,
                steps=config.steps,
                eval_every=config.eval_every,
            ),
        )
    return out


def finetune_config(config: StudyConfig, run: Run, out: Path, backbone=None, budget: StepBudget | None = None):
    """The :class:`~tlmic_feats.finetune.FinetuneConfig` of one run (``budget``: its fraction's)."""
    from .finetune import FinetuneConfig

    base = FinetuneConfig(
        data=config.data,
        backbone=config.backbone,
        weights=config.weights,
        epochs=config.epochs,
        steps=budget.steps if budget else config.steps,
        min_steps=config.min_steps,
        eval_every=budget.eval_every if budget else config.eval_every,
        batch_size=config.batch_size,
        lr=config.lr,
        patience=config.patience,
        pool=config.pool,
        input_size=config.input_size,
        keep_checkpoints=config.keep_checkpoints,
        fraction=run.fraction,
        seed=run.seed,
        bootstrap=config.bootstrap,
        precision=config.precision,
        device=config.device,
        export_onnx=False,
        out=str(out / "runs" / run.id),
        monitor="auprc",
        compactness=run.seed == 0,  # the same network for every seed: measured once per arm
    )
    arm = run.arm
    if arm.startswith("t"):
        return _lpft(replace(base, truncate=arm[1:]), config, out, arm[1:], config.lpft in ("truncated", "all"))
    if arm == "full":
        return _lpft(replace(base, truncate="all"), config, out, full_address(backbone), config.lpft == "all")
    if arm == "scratch":
        return replace(base, truncate="all", weights="random")
    if arm.startswith("cbr-"):
        return replace(base, arch=arm, weights="random")
    if arm == "hybrid":
        return replace(base, arch="hybrid")
    if arm == "layerwise":
        lw = replace(
            base, truncate="all", freeze_until=layerwise_freeze(backbone), backbone_lr_mult=config.layerwise_lr_mult
        )
        return _lpft(lw, config, out, full_address(backbone), config.lpft == "all")
    raise UsageError(f"unknown study arm {arm!r}")


def full_address(backbone) -> str | None:
    from .finetune import full_depth_address

    return full_depth_address(backbone) if backbone is not None else None


def _lpft(fc, config: StudyConfig, out: Path, address: str | None, wanted: bool):
    """``fc`` with its head starting from the study's probe at ``address`` for the run's own
    subset, when LP-FT applies to the arm and that probe was fitted (a subset with fewer than two
    images of a class has none; the run then starts from a random head, as its metrics record)."""
    from .probing import fitted_probe_dir

    if not wanted or address is None:
        return fc
    try:
        fitted_probe_dir(out / "probes", address, "logreg", fc.fraction, fc.seed)
    except UsageError:
        return fc
    return replace(fc, head_init=str(out / "probes"))


def block_ends(backbone) -> list[str]:
    from .backbones.cutpoints import address_key

    return sorted((cp.address for cp in backbone.cut_points if cp.is_block), key=address_key)


def layerwise_freeze(backbone) -> str:
    """Layer-wise finetuning freezes the bottom half of the block ends."""
    ends = block_ends(backbone)
    return ends[max(0, len(ends) // 2 - 1)]


def units_of(backbone, block: str) -> list[str]:
    """The unit-level cut points inside ``block`` that differ from its block end."""
    from .backbones.cutpoints import address_key, storage_groups

    groups = storage_groups(backbone.cut_points)
    end = groups[block]
    inside = [cp.address for cp in backbone.cut_points if not cp.is_block and cp.block == int(block)]
    return sorted((a for a in inside if groups[a] != end and a != end), key=address_key)


# --- selection (validation data only) ------------------------------------------------------------------


def probe_ranking(probe_rows: list[dict], fraction: float, candidates: list[str]) -> list[tuple[str, float]]:
    """``candidates`` ranked by the probes' mean validation AUPRC at ``fraction`` (both models, all
    seeds, no controls), best first."""
    scores = {}
    for a in candidates:
        v = [
            r["val_auprc"]
            for r in probe_rows
            if r["layer"] == a and r["fraction"] == fraction and r["control"] == "none" and np.isfinite(r["val_auprc"])
        ]
        scores[a] = float(np.mean(v)) if v else -np.inf
    return sorted(scores.items(), key=lambda kv: -kv[1])


def run_val_auprc(run_dir: Path) -> float:
    """Validation AUPRC of a finished run's kept (best) step (its last evaluation when none improved)."""
    from .finetune import read_history

    metrics = json.loads((run_dir / "metrics.json").read_text())
    history = read_history(run_dir / "history.csv")
    kept = [h for h in history if h["step"] == int(metrics["best_step"])] or history[-1:]
    return float(kept[0]["val_auprc"])


# --- the study ---------------------------------------------------------------------------------------


class _Study:
    """State shared by the steps of one study invocation."""

    def __init__(self, config: StudyConfig, out: Path, log, progress: bool) -> None:
        self.config, self.out, self.log, self.progress = config, out, log, progress
        self.state_file = out / "study.json"
        self.state = json.loads(self.state_file.read_text()) if self.state_file.is_file() else {}

    def save(self) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.state, indent=1, default=float))
        tmp.replace(self.state_file)

    def claim(self) -> None:
        key = self.config.results_key
        if self.state:
            old = self.state.get("config", {})
            diff = sorted(k for k in set(old) | set(key) if old.get(k) != key.get(k))
            if diff:
                raise UsageError(
                    f"study directory {self.out} holds another study (differs in: {', '.join(diff)}); "
                    "choose another --out or delete it"
                )
        elif self.out.exists() and any(self.out.iterdir()):
            raise UsageError(f"{self.out} exists and is not a study directory; choose another --out")
        self.out.mkdir(parents=True, exist_ok=True)
        self.state.setdefault("config", key)
        self.state.setdefault("compute", {})
        self.state.setdefault("runs", {})
        self.save()


def run_study(
    config: StudyConfig,
    *,
    budget: int = 0,
    max_minutes: float = 0.0,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    on_run: Callable[[str], None] | None = None,
) -> StudyResult:
    """Run (or resume) a study; see the module docstring. ``budget`` (maximum finetuning runs in the
    study, 0: no limit) and ``max_minutes`` (no new run starts after that long, 0: no limit) are not
    part of the study's identity: a rerun with a larger budget continues it."""

    from .store import StoreLock

    config.validate()
    log = log or (lambda m: print(m, file=sys.stderr))
    out = Path(config.out) if config.out else default_out(config)
    with StoreLock(out):  # one process writes a study at a time; `tlmic cache clean` leaves it alone
        return _run_study(config, out, budget, max_minutes, progress, log, on_run)


def _run_study(config: StudyConfig, out: Path, budget: int, max_minutes: float, progress: bool, log, on_run):
    from .backbones.registry import build_backbone
    from .extract import ExtractConfig, extract_features
    from .probing import ProbeConfig, run_probes

    study = _Study(config, out, log, progress)
    study.claim()
    t_start = time.perf_counter()

    # 1. extract (or reuse) every cut point
    extracted = extract_features(
        ExtractConfig(
            data=config.data,
            backbone=config.backbone,
            weights=config.weights,
            layers="all",
            pool=config.pool,
            store=config.store,
            cluster=config.cluster,
            device=config.device,
            input_size=config.input_size,
        ),
        progress=progress,
        log=log,
    )
    study.state["store"] = str(extracted.store.path)
    if not extracted.already_complete:
        study.state["compute"]["extract_seconds"] = round(extracted.seconds, 2)
    study.state["compute"].setdefault("extract_seconds", 0.0)
    study.save()

    # 2. probe every cut point
    t = time.perf_counter()
    probes = run_probes(
        ProbeConfig(
            store=str(extracted.store.path),
            layers="all",
            models=config.probe_models,
            fractions=config.fractions,
            seeds=config.seeds,
            bootstrap=config.bootstrap,
            out=str(out / "probes"),
            cluster=config.cluster,
        ),
        progress=progress,
        log=log,
    )
    if "probe_seconds" not in study.state["compute"]:
        study.state["compute"]["probe_seconds"] = round(time.perf_counter() - t, 2)
    study.save()

    backbone = build_backbone(config.backbone, config.weights, input_size=config.input_size)
    calibration = calibrate(config, backbone, out, log=log)
    budgets = fraction_budgets(config)
    deadline = t_start + max_minutes * 60 if max_minutes else None
    not_run: list[str] = []
    choices = study.state.setdefault("choices", {})

    def execute(run: Run) -> bool:
        """Run (or resume, or skip as finished) one finetuning run; False when budget or time forbid it."""
        from .finetune import finetune

        run_dir = out / "runs" / run.id
        record = study.state["runs"].get(run.id, {})
        if (run_dir / "metrics.json").is_file():
            if record.get("status") != "done":
                study.state["runs"][run.id] = {**asdict(run), "status": "done", "seconds": record.get("seconds")}
                study.save()
            return True
        if record.get("status") == "impossible":
            not_run.append(f"{run.id} ({record['why']})")
            return False
        started = sum(1 for r in study.state["runs"].values() if r.get("status") in ("done", "started"))
        if budget and record.get("status") != "started" and started >= budget:
            not_run.append(f"{run.id} (budget of {budget} runs)")
            return False
        if deadline is not None and time.perf_counter() > deadline:
            not_run.append(f"{run.id} (--max-minutes {max_minutes:g})")
            return False
        study.state["runs"][run.id] = {**asdict(run), "status": "started"}
        study.save()
        log(f"study: {run.stage} {run.id}")
        t0 = time.perf_counter()
        try:
            finetune(
                finetune_config(config, run, out, backbone, budgets[run.fraction][1]),
                resume=(run_dir / "run.json").is_file(),
                progress=progress,
                log=log,
            )
        except SubsetTooSmallError as e:  # a tiny fraction without one class: say so, go on
            study.state["runs"][run.id] = {**asdict(run), "status": "impossible", "why": str(e)}
            study.save()
            not_run.append(f"{run.id} ({e})")
            return False
        seconds = round(time.perf_counter() - t0, 2) + float(record.get("seconds") or 0)
        study.state["runs"][run.id] = {**asdict(run), "status": "done", "seconds": seconds}
        study.save()
        if on_run:
            on_run(run.id)
        return True

    ends = block_ends(backbone)
    candidates = ends[:-1]  # the deepest block end is full finetuning's
    # 3. stage 1: top block ends by probe validation AUPRC, full, scratch
    for fraction in config.fractions:
        ranking = probe_ranking(probes.rows, float(fraction), candidates)
        top = [a for a, _ in ranking[: config.top_blocks]]
        n_train, steps = budgets[float(fraction)]
        choices[f"{fraction:g}"] = {
            "stage1_ranking": ranking,
            "blocks": top,
            "n_train": n_train,
            "budget": asdict(steps),
        }
        for seed in range(config.seeds):
            for arm in [f"t{a}" for a in top] + ["full", "scratch"]:
                execute(Run("stage1", arm, float(fraction), seed))
    study.save()
    # 4. stage 2: inside the best finetuned block, the top units by probe validation AUPRC
    for fraction in config.fractions:
        c = choices[f"{fraction:g}"]
        finetuned = {}
        for a in c["blocks"]:
            ids = [Run("stage1", f"t{a}", float(fraction), s).id for s in range(config.seeds)]
            possible = [i for i in ids if study.state["runs"].get(i, {}).get("status") != "impossible"]
            vals = [run_val_auprc(out / "runs" / i) for i in possible if (out / "runs" / i / "metrics.json").is_file()]
            if possible and len(vals) == len(possible):
                finetuned[a] = float(np.mean(vals))
        if len(finetuned) < len(c["blocks"]) or not config.top_units:
            c["stage2"] = None if config.top_units else "skipped (--top-units 0)"
            if config.top_units:
                not_run.append(f"stage 2 at fraction {fraction:g} (stage 1 unfinished)")
            continue
        best = max(finetuned, key=finetuned.get)
        ranking = probe_ranking(probes.rows, float(fraction), units_of(backbone, best))
        units = [a for a, _ in ranking[: config.top_units]]
        c.update(best_block=best, stage1_val_auprc=finetuned, stage2_ranking=ranking, units=units)
        for seed in range(config.seeds):
            for a in units:
                execute(Run("stage2", f"t{a}", float(fraction), seed))
    study.save()
    # 5. baselines
    for fraction in config.fractions:
        for seed in range(config.seeds):
            for b in config.baselines:
                execute(Run("baseline", b, float(fraction), seed))
    study.state["not_run"] = not_run
    study.save()

    from .study_report import collect_rows, render_study_report

    rows = collect_rows(out, config, probes.out)
    report = render_study_report(out, config, backbone, calibration, rows, study.state)
    return StudyResult(out, rows, choices, not_run, report)


# --- cost model and plan -------------------------------------------------------------------------------


def calibrate(config: StudyConfig, backbone, out: Path, *, arms: list[str] | None = None, log=None) -> dict:
    """Measured seconds per image of one training step and of one inference pass, and the bytes of
    the weights, per network (every cut point's truncation, full, the baselines), on this machine;
    kept in ``calibration.json`` so that reruns and reports share one cost model."""
    import torch

    from .backbones.cutpoints import storage_groups
    from .device import autocast, resolve_device, resolve_precision
    from .finetune import build_model, full_depth_address, n_outputs_for

    path = out / "calibration.json"
    cal = json.loads(path.read_text()) if path.is_file() else {}
    arms = arms or [*distinct_truncations(backbone), "full", *[b for b in config.baselines if b != "layerwise"]]
    todo = [a for a in arms if "state_bytes" not in cal.get(a, {})]
    if not todo:
        return cal
    device = resolve_device(config.device)
    precision = resolve_precision(config.precision, device, purpose="train")
    size = backbone.preprocess.input_size
    batch = max(2, min(4, config.batch_size))
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
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(cal, indent=1))
    tmp.replace(path)
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
    from .backbones.cutpoints import storage_groups
    from .finetune import full_depth_address

    groups = storage_groups(backbone.cut_points)
    full = groups[full_depth_address(backbone)]
    return [f"t{a}" for a, g in groups.items() if g == a and a != full]


def plan_study(config: StudyConfig, *, budget: int = 0, log: Callable[[str], None] | None = None) -> str:
    """What :func:`run_study` would do, its estimated cost and the disk it will write, from a
    measured short calibration; nothing is extracted, probed or finetuned. Returns the plan as text."""
    from .backbones.registry import build_backbone
    from .data.readers import load_manifest

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
    lines = [
        f"study plan: {config.backbone} ({config.weights}) on {config.data.path}; {len(manifest)} images, "
        f"fractions {', '.join(f'{f:g}' for f in config.fractions)}, {config.seeds} seed(s)",
        "budget per run (every arm of a fraction alike): "
        + "; ".join(f"{f:g}: {n} images, {b.describe()}" for f, (n, b) in budgets.items()),
        f"cost model: {cal['_meta']['device']} {cal['_meta']['precision']}, measured seconds per training image "
        "(calibration.json); estimates assume no early stop",
        "",
        "| stage | run | train images | steps | estimated s | status |",
        "| --- | --- | ---: | ---: | ---: | --- |",
    ]
    total, planned = 0.0, []
    blocks = [f"t{a}" for a in ends[:-1]]

    def add(stage: str, name: str, arm: str | None, f: float, s: int) -> None:
        nonlocal total
        rid = f"{name}-f{f:g}-s{s}"
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

    chosen = state.get("choices", {})
    for stage, key, label, n in (("1", "blocks", "block", config.top_blocks), ("2", "units", "unit", config.top_units)):
        for f in config.fractions:
            picked = chosen.get(f"{f:g}", {}).get(key)  # known once the study has made its choice
            for s in range(config.seeds):
                for i in range(n if picked is None else len(picked)):
                    if picked is not None:
                        add(stage, f"t{picked[i]}", f"t{picked[i]}", f, s)
                    else:
                        add(stage, f"{label}#{i + 1}", None, f, s)
                if stage == "1":
                    add(stage, "full", "full", f, s)
                    add(stage, "scratch", "scratch", f, s)
    for f in config.fractions:
        for s in range(config.seeds):
            for b in config.baselines:
                add("baseline", b, b, f, s)
    exhaustive = sum(
        estimate_seconds(cal, arm, budgets[float(f)][1], n_val, n_test) * config.seeds
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
        + ", ".join(f"{k} {_mb(v)}" for k, v in disk.items() if k != "total")
        + f"; {_mb(disk['total'])} in all",
    ]
    return "\n".join(lines)


def _mb(n: float) -> str:
    return f"{n / 1e6:.0f} MB" if n >= 1e6 else f"{n / 1e3:.0f} kB"


def estimate_disk(config: StudyConfig, backbone, manifest, cal: dict, arms: list[str], budgets: dict) -> dict:
    """Bytes a study writes, as upper bounds (stores and caches compress): the feature store (float32
    features of every stored cut point for every image), the pixel cache (uint8 squares), the probe
    run (predictions and fitted probes of every cell) and the finetuning runs (``best.pt`` each, plus
    the resume state of the one in progress: weights and AdamW's two moments; every run keeps it
    with ``keep_checkpoints``), with predictions and logs."""
    from .backbones.cutpoints import storage_groups
    from .backbones.pooling import pooled_width

    n = len(manifest)
    n_scored = int((manifest.splits == "val").sum() + (manifest.splits == "test").sum())
    groups = storage_groups(backbone.cut_points)
    widths = sum(
        pooled_width(cp.channels, config.pool) for cp in backbone.cut_points if groups[cp.address] == cp.address
    )
    pre = backbone.preprocess
    cells = len(backbone.cut_points) * len(config.probe_models) * len(config.fractions) * config.seeds
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

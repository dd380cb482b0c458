"""The report's Markdown: the header, one section per fraction and the compute section."""

from __future__ import annotations

from pathlib import Path

from ...metrics.paired import format_p
from ...metrics.verdicts import format_verdict
from ...runtime.paths import human_bytes


def _ci(a: dict, m: str) -> str:
    lo, hi = a[f"{m}_ci"]
    sd = f" ± {a[f'{m}_sd']:.3f}" if a["seeds"] > 1 else ""  # one seed has no spread to show
    return f"{a[m]:.3f}{sd} [{lo:.3f}, {hi:.3f}]"


def _n(v, scale: float, unit: str, digits: int = 2) -> str:
    return "" if v is None else f"{v / scale:.{digits}f} {unit}".strip()


_LPFT_SENTENCE = {
    "truncated": "Truncated arms start their head from the logistic-regression probe of their cut point, "
    "fitted on the same training subset (LP-FT); the other arms from a random head. ",
    "all": "Every pretrained arm starts its head from the logistic-regression probe of its cut point, "
    "fitted on the same training subset (LP-FT). ",
    "none": "Every head starts random (no LP-FT). ",
}


def _token_pooling(pool: str, backbone) -> str:
    """For a transformer: over which tokens the pooling ran (" (mean over the patch tokens, ...)")."""
    from ...backbones.pooling import describe_pooling

    cut = backbone.cut_points[-1]
    return f" ({describe_pooling(pool, cut)})" if cut.layout == "tokens" else ""


def header(config, backbone, manifest) -> list[str]:
    """The title and what every arm shared: data, backbone, pooling, budget rule, LP-FT, metrics."""
    n = {s: int((manifest.splits == s).sum()) for s in ("train", "val", "test")}
    metrics = (
        "Test metrics: mean ± sd over seeds [95% CI of the expected value over training runs and test images: "
        "between-seed variance plus the test-image variance the seeds share, t quantile; probes and single "
        "seeds: over test images only]. "
        if len(config.seed_list) > 1
        else "Test metrics: one seed per arm [95% bootstrap CI over test images]. "
    )
    return [
        f"# tlmic study: {config.backbone} on {Path(config.data.path).name}",
        "",
        f"{len(manifest)} images ({n['train']} train, {n['val']} val, {n['test']} test), {manifest.label_kind} "
        f"labels ({', '.join(manifest.label_names)}); backbone {config.backbone} ({config.weights} weights) "
        f"at {backbone.preprocess.input_size} px; {len(config.seed_list)} seed(s) per arm "
        f"({', '.join(map(str, config.seed_list))}). Pooling: {config.pool}"
        f"{_token_pooling(config.pool, backbone)} for the "
        "probes' features and for every finetuned network's head. Finetuning: the same number of optimizer steps "
        f"for every arm of a fraction (below), early stop on validation AUPRC after {config.training.patience} evaluations "
        "without improvement, the best evaluation's weights kept. "
        + _LPFT_SENTENCE[config.lpft]
        + metrics
        + "Every choice (layers, cut points, steps kept, thresholds) was made on validation data.",
        "",
    ]


def fraction_section(doc: dict, c: dict, fraction: float, small_test: str = "") -> list[str]:
    """One fraction: the table of every arm, its budget, the winner, truncated vs full, the search
    (with the ties on validation the tie rule broke); ``small_test``: the warning that the test set
    is small, repeated under the table whose intervals it concerns."""
    lines = [
        f"## {fraction:g} of the training set ({doc['table'][0]['n_train']} images)",
        "",
        "| arm | test AUROC | test AUPRC | val AUPRC | steps (best), train s | params | MACs | CPU ms/img |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for a in doc["table"]:
        steps = (
            "" if a["steps_run"] is None else f"{a['steps_run']:.0f} ({a['best_step']:.0f}), {a['train_seconds']:.0f}"
        )
        lines.append(
            f"| {a['name']} | {_ci(a, 'auroc')} | {_ci(a, 'auprc')} | {a['val_auprc']:.3f} | {steps} | "
            f"{_n(a['params'], 1e6, 'M')} | {_n(a['macs'], 1e9, 'G')} | {_n(a['latency_ms'], 1, '', 1)} |"
        )
    if c.get("budget"):
        from ...finetune.budget import StepBudget

        lines += [
            "",
            f"Budget: {StepBudget(**c['budget']).describe()}; steps (best), train s: steps run, the step "
            "kept and seconds of training, mean over seeds (a run stops early when its patience runs out).",
        ]
    if small_test:
        lines += ["", f"Small sample, for these intervals: {small_test.removeprefix('small sample: ')}."]
    p = doc["pick"]
    lines += [
        "",
        f"**Chosen on validation: {p['name']}** (val AUPRC {p['val_auprc']:.3f}); its test AUROC {_ci(p, 'auroc')}, "
        f"AUPRC {_ci(p, 'auprc')}.",
    ]
    verdicts = doc.get("verdicts") or []
    if verdicts:
        lines += ["", "Verdicts over training runs (seeds) and test images, A minus B:", ""]
        lines += [f"- {'**primary**' if v.primary else 'exploratory'}: {format_verdict(v)}" for v in verdicts]
        lines.append("")
    if doc["paired"]:
        d = doc["paired"]
        lines.append(
            f"These trained models on these test images (training variance not included): {d['name']}, the "
            f"truncated arm with the best validation AUPRC, minus full finetuning: {_difference(d)}."
        )
    heads = doc.get("versus_head") or []
    if heads:
        parts = [
            f"{h['model']} @ {h['best']} minus @ {h['head']}: {_difference(h)}"
            if "auroc" in h
            else f"{h['model']}: the best layer is the head ({h['head']})"
            for h in heads
        ]
        lines.append(f"Best probe layer vs the head (the deepest cut point), same test images: {'; '.join(parts)}.")
    if c:
        lines.append(_search_line(c))
        if c.get("best_block"):
            units = ", ".join(f"{a} {v:.3f}" for a, v in c.get("stage2_ranking", [])) or "none"
            lines.append(
                f"Best finetuned block {c['best_block']} (val AUPRC "
                + ", ".join(f"{a}: {v:.3f}" for a, v in c["stage1_val_auprc"].items())
                + f"); its units by {_unit_signal(c.get('search', 'probe'))}: {units}; finetuned: "
                f"{', '.join(c['units']) or 'none'}."
            )
        if c.get("ties"):
            from ..arms import describe_tie

            lines.append("Ties on validation: " + "; ".join(describe_tie(t) for t in c["ties"]) + ".")
    return lines


def _unit_signal(search: str) -> str:
    from ..search import SIGNALS

    return (
        SIGNALS["similarity"]
        if search == "similarity"
        else "probe val AUPRC" + (" (successive halving chose)" if search == "halving" else "")
    )


def _search_line(c: dict) -> str:
    """What the fraction's search ranked and finetuned, in one line."""
    from ..search import SIGNALS

    search = c.get("search", "probe")

    def ranked(pairs) -> str:
        return ", ".join(f"{a} {v:.3f}" for a, v in pairs)

    finetuned = f"finetuned: {', '.join(c.get('blocks', [])) or 'none yet'}."
    if search == "halving":
        rungs = "; ".join(
            f"at step {r['steps']} {ranked(r['ranking'])}, kept {', '.join(r['kept'])}"
            for r in c.get("stage1_halving", [])
        )
        return f"Search (successive halving, block ends by {SIGNALS['exhaustive']}): {rungs or 'one rung'}; {finetuned}"
    if search == "similarity":
        return f"Search: block ends by {SIGNALS['similarity']}: {ranked(c.get('stage1_similarity', []))}; {finetuned}"
    line = f"Search: block ends by probe val AUPRC: {ranked(c.get('stage1_ranking', []))}; {finetuned}"
    return (
        line.replace("Search:", "Search (exhaustive, every block end finetuned):") if search == "exhaustive" else line
    )


def _difference(d: dict) -> str:
    """``AUROC +0.041 [+0.011, +0.076], p = 0.006 (DeLong); AUPRC ... (paired bootstrap)``."""
    out = []
    for m, how in (("auroc", "DeLong"), ("auprc", "paired bootstrap")):
        e = d[m]
        out.append(f"{m.upper()} {e['diff']:+.3f} [{e['ci'][0]:+.3f}, {e['ci'][1]:+.3f}], {format_p(e)} ({how})")
    return "; ".join(out)


def compute_section(comp: dict) -> list[str]:
    """What the search spent against an exhaustive one, and the disk against the plan's estimate."""
    disk_est, disk_now = comp["disk_estimate"], comp["disk_measured"]
    probing = comp["extract_seconds"] + comp["probe_seconds"]
    if comp["search_runs"] and comp["search_estimate"]:
        saving = comp["exhaustive_estimate"] / comp["search_estimate"]
        verdict = (
            f"The {comp['search']} search finetuned {comp['search_runs']} truncated networks where finetuning every "
            f"truncation would take {comp['exhaustive_runs']}: {saving:.1f}x less finetuning compute by the cost model "
            "(seconds of an optimizer step, an evaluation and a run's fixed costs measured on this machine for each "
            f"network, `calibration.json`; no early stop assumed), for {probing:.0f} s of extraction and probing."
        )
    else:  # nothing truncated finetuned (yet): no ratio to state
        verdict = (
            f"The {comp['search']} search has finetuned no truncated network yet; finetuning every truncation would "
            f"take {comp['exhaustive_runs']} runs."
        )
    stopped = f"; halving also stopped {comp['stopped_runs']} early" if comp.get("stopped_runs") else ""
    return [
        "## Compute",
        "",
        "| what | runs | measured s | estimated s (cost model) |",
        "| --- | ---: | ---: | ---: |",
        f"| extraction (every cut point, once) | | {comp['extract_seconds']:.0f} | |",
        f"| probes (every cut point, both models) | | {comp['probe_seconds']:.0f} | |",
        f"| {comp['search']} search: truncated finetunes (stages 1 and 2{stopped}) | {comp['search_runs']} | "
        f"{comp['search_measured']:.0f} | {comp['search_estimate']:.0f} |",
        f"| every truncation: every block end and every unit | {comp['exhaustive_runs']} | | "
        f"{comp['exhaustive_estimate']:.0f} |",
        f"| other arms (full, scratch, baselines) | {comp['other_runs']} | {comp['other_measured']:.0f} | |",
        "",
        "| disk | measured | estimated (plan, upper bound) |",
        "| --- | ---: | ---: |",
        *[f"| {k} | {human_bytes(disk_now[k])} | {human_bytes(disk_est[k])} |" for k in disk_now],
        "",
        verdict,
        "",
    ]

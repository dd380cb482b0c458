"""The study report: ``results.csv``, ``report.md``, a self-contained ``report.html`` and figures.

Per fraction, one table of every arm (the probes at their best layer, the truncated finetunes of
both search stages, full finetuning, training from scratch, the baselines): test AUROC and AUPRC
as mean ± sd over seeds with a 95% bootstrap CI of the seed mean over test images, the validation
AUPRC that selection used, parameters, MACs and CPU latency per image. Then the winner on test and
the arm validation would pick; paired differences on the same test images (AUROC by DeLong's test,
AUPRC by a paired bootstrap, each with its 95% CI and p-value) of the best truncated arm (chosen on
validation) against full finetuning and of each probe's best layer against the head; the probe
curves with the finetuned cut points overlaid; and the compute the study's search spent
against finetuning every block end and unit. With exhaustive results (every block end finetuned at
every seed), every search judged on them: rank correlations, regret with its interval and measured
compute (``search.csv``, :mod:`.search`).
"""

from __future__ import annotations

from pathlib import Path

from ...runtime.errors import TlmicError
from ...runtime.files import write_text
from ..config import ROW_COLUMNS
from .compute import compute_summary, measured_disk
from .figures import plot_fraction, plot_reuse_fraction
from .html import markdown_to_html
from .results import collect_rows, training_precision, write_results_csv
from .search import judge_searches, search_section, write_search_csv
from .summary import best_truncated, primary_verdicts, summarize, write_verdicts_csv
from .text import compute_section, fraction_section, header

__all__ = [
    "ROW_COLUMNS",
    "best_truncated",
    "collect_rows",
    "compute_summary",
    "judge_searches",
    "markdown_to_html",
    "measured_disk",
    "primary_verdicts",
    "render_study_report",
    "summarize",
    "training_precision",
    "write_results_csv",
    "write_search_csv",
    "write_verdicts_csv",
]


def render_study_report(out: Path, config, backbone, calibration: dict, rows: list[dict], state: dict) -> Path:
    """``report.md`` and ``report.html`` (figures embedded) from the study's rows and state."""
    from ...data.readers import load_manifest

    manifest = load_manifest(config.data)
    figures = out / "figures"
    figures.mkdir(exist_ok=True)
    lines = header(config, backbone, manifest)
    small = state.get("small_samples") or []
    if small:
        lines += ["**Small samples** (the numbers below rest on few images):", "", *[f"- {w}" for w in small], ""]
    small_test = next((w for w in small if w.startswith("small sample: test ")), "")
    if not rows:
        lines.append("No finished runs yet.")
    summary = summarize(out, rows, manifest.label_kind, n_resamples=config.bootstrap, rope=config.rope) if rows else {}
    primary_verdicts(summary)
    precision = training_precision(rows)
    write_verdicts_csv(out / "verdicts.csv", summary, precision)
    if rows:
        lines += [f"Finetuning precision: {precision} (per run in results.csv; see --precision).", ""]
    for fraction, doc in summary.items():
        lines += fraction_section(doc, state.get("choices", {}).get(f"{fraction:g}", {}), fraction, small_test)
        plot = plot_fraction(out, rows, fraction, figures / f"probe-curve-f{fraction:g}.png", config)
        lines += ["", f"![probe curve and finetuned cut points at {fraction:g}]({plot.relative_to(out)})", ""]
        reuse = None
        if doc["paired"] is not None:  # the best truncated arm and full finetuning both ran
            try:
                reuse = plot_reuse_fraction(
                    out, rows, fraction, doc["paired"]["arm"], figures / f"feature-reuse-f{fraction:g}.png"
                )
            except TlmicError as e:
                lines += [f"Feature reuse not shown: {e}", ""]
        if reuse is not None:
            lines += [
                "Feature reuse: linear CKA per cut point between the pretrained backbone and each finetuned "
                "network on the test images (near 1: features finetuning kept).",
                "",
                f"![feature reuse of full finetuning and the best truncated arm at {fraction:g}]({reuse.relative_to(out)})",
                "",
            ]
    judged = judge_searches(out, config, backbone, rows, state, manifest.label_kind) if rows else {}
    if judged:
        write_search_csv(out / "search.csv", judged)
        lines += search_section(judged, config.top_blocks)
    if rows:
        lines += compute_section(compute_summary(config, backbone, calibration, rows, state, manifest, out))
    if state.get("not_run"):
        lines += ["## Not run", "", *[f"- {x}" for x in state["not_run"]], ""]
    text = "\n".join(lines) + "\n"
    path = out / "report.md"
    write_text(path, text)
    write_text(out / "report.html", markdown_to_html(text, out))
    return path

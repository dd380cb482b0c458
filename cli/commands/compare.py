"""``tlmic compare``: two models, or two arms' training runs, on the same test images."""

from __future__ import annotations

import click


@click.command(context_settings={"ignore_unknown_options": True})
@click.argument("files", nargs=-1, required=True, type=click.UNPROCESSED)
@click.option("--split", default="test", show_default=True, help="The split the files score (test or val).")
@click.option("--rope", default=0.01, show_default=True, help="Region of practical equivalence (AUROC and AUPRC).")
@click.option("--unpaired", is_flag=True, help="A's and B's runs are independent seeds (not paired by order).")
@click.option("--bootstrap", default=2000, show_default=True, help="Resamples (test images, and seeds for groups).")
@click.option("--seed", default=0, show_default=True, help="Seed of the resamples.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def compare(files, split, rope, unpaired, bootstrap, seed, as_json):
    """Compare predictions files on the same images, A minus B.

    \b
    Two files (tlmic compare A.csv B.csv): these two trained models on these test images, AUROC by
    DeLong's test, AUPRC by a paired bootstrap.
    Groups of runs (tlmic compare A_s0.csv A_s1.csv A_s2.csv --vs B_s0.csv B_s1.csv B_s2.csv): the arms
    over training runs and test images, paired by order (the same seed), with a verdict: A better,
    B better, equivalent (within --rope) or inconclusive.
    """
    import json

    from tlmic_feats.metrics.compare import compare_runs, predictions_path
    from tlmic_feats.runtime.errors import UsageError

    files = list(files)
    if files.count("--vs") > 1:
        raise UsageError("give --vs once: A files --vs B files")
    cut = files.index("--vs") if "--vs" in files else len(files)
    preds_a, preds_b = files[:cut], files[cut + 1 :]
    for f in (*preds_a, *preds_b):
        if f.startswith("--"):
            valid = "--vs, --split, --rope, --unpaired, --bootstrap, --seed, --json"
            raise UsageError(f"no such option: {f}; valid: {valid}")
        predictions_path(f)  # a file, or a run directory holding predictions.csv
    if "--vs" in files and not (preds_a and preds_b):
        raise UsageError("give predictions files on both sides of --vs: A files --vs B files")
    if not preds_b and len(preds_a) != 2:
        raise UsageError(f"give two predictions files, or groups: A files --vs B files (got {len(preds_a)} files)")

    if not preds_b:
        c = compare_runs(preds_a[0], preds_a[1], split=split, n_resamples=bootstrap, random_state=seed)
        result = c.result
        if as_json:
            click.echo(json.dumps(result, indent=1, default=float))
            return
        from tlmic_feats.metrics.paired import format_comparison

        click.echo(f"A: {preds_a[0]}\nB: {preds_a[1]}\n{result['n']} {split} images ({result['kind']} labels)")
        click.echo(
            "These two trained models on these test images (a rerun's training variance is not included):"
        )
        click.echo(format_comparison(result, c.a, c.b))
        return
    c = compare_runs(
        preds_a, preds_b, split=split, paired=not unpaired, rope=rope, n_resamples=bootstrap, random_state=seed
    )
    result = c.result
    if as_json:
        doc = {**result, "a": list(preds_a), "b": list(preds_b)}
        doc["verdicts"] = {m: v.as_dict() for m, v in result["verdicts"].items()}
        click.echo(json.dumps(doc, indent=1, default=float))
        return
    from tlmic_feats.metrics.verdicts import format_verdict

    from tlmic_feats.metrics.compare import side_name

    runs_a, runs_b = (", ".join(side_name(p) for p in side) for side in (c.paths_a, c.paths_b))
    how = "unpaired" if unpaired else "paired by order"
    click.echo(f"A: {len(preds_a)} run(s) ({runs_a})\nB: {len(preds_b)} run(s) ({runs_b}); {how}")
    click.echo(f"{result['n']} {split} images ({result['kind']} labels); over training runs and test images:")
    for v in result["verdicts"].values():
        click.echo(format_verdict(v))


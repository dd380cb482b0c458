"""``tlmic doctor``."""

from __future__ import annotations

import click


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def doctor(as_json):
    """Devices, onnxruntime providers that really work, CPU features, versions, cache size."""
    import json

    from tlmic_feats.doctor import diagnose, format_report

    info = diagnose()
    click.echo(json.dumps(info, indent=1) if as_json else format_report(info))

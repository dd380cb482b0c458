"""``tlmic cache info|list|clean``."""

from __future__ import annotations

import time

import click

from tlmic_feats.runtime.cache import KINDS


def _scan():
    from tlmic_feats.runtime.cache import scan_cache

    return scan_cache()


@click.group()
def cache():
    """What tlmic keeps under its cache folder ($TLMIC_CACHE or ./cache), and reclaiming it."""


@cache.command()
def info():
    """Sizes by kind: feature stores, pixel caches, ONNX exports, runs, studies, datasets, benchmarks."""
    from tlmic_feats.runtime.cache import summarize_by_kind
    from tlmic_feats.runtime.paths import cache_root, human_bytes

    items = _scan()
    total = sum(i.bytes for i in items)
    click.echo(f"cache: {cache_root().resolve()} ({human_bytes(total)} in {len(items)} items)")
    for kind, (n, size) in summarize_by_kind(items).items():
        click.echo(f"  {kind:<8} {n:>4} item(s) {human_bytes(size):>10}")
    locked = [i for i in items if i.locked_by]
    if locked:
        click.echo(f"  {len(locked)} item(s) in use by a running process (never cleaned while locked)")
    click.echo("`tlmic cache list` names them; `tlmic cache clean --kind K` or `--older-than DAYS` removes them.")


@cache.command(name="list")
@click.option("--kind", "kinds", multiple=True, type=click.Choice(KINDS), help="Only this kind (repeatable).")
def list_items(kinds):
    """Every item: kind, size, age, dataset and backbone, path (largest first)."""
    from tlmic_feats.runtime.cache import select_items
    from tlmic_feats.runtime.paths import human_bytes

    items = select_items(_scan(), kinds=kinds)
    click.echo("| kind | size | age | dataset | backbone | path |")
    click.echo("| --- | ---: | ---: | --- | --- | --- |")
    for i in items:
        lock = f" (in use: {i.locked_by})" if i.locked_by else ""
        click.echo(
            f"| {i.kind} | {human_bytes(i.bytes)} | {i.age_days:.1f} d | {i.dataset} | {i.backbone} | {i.path}{lock} |"
        )


@cache.command()
@click.option("--kind", "kinds", multiple=True, type=click.Choice(KINDS), help="Remove items of this kind.")
@click.option("--older-than", default=0.0, show_default=True, help="Only items whose newest file is older (days).")
@click.option("--path", "paths", multiple=True, help="Remove this item (or the items under this folder).")
@click.option("--all", "everything", is_flag=True, help="Every item (with no --kind / --path given).")
@click.option("--yes", is_flag=True, help="Do not ask before deleting.")
def clean(kinds, older_than, paths, everything, yes):
    """Remove items by kind, age or path; items a running process holds are left alone."""
    from tlmic_feats.runtime.cache import clean_cache, select_items
    from tlmic_feats.runtime.paths import human_bytes

    if not (kinds or paths or older_than or everything):
        raise click.UsageError("say what to remove: --kind, --older-than, --path or --all")
    items = select_items(_scan(), kinds=kinds, older_than_days=older_than, paths=paths)
    if not items:
        click.echo("nothing matches; nothing removed")
        return
    size = sum(i.bytes for i in items)
    for i in items:
        click.echo(f"  {i.kind:<8} {human_bytes(i.bytes):>10}  {i.path}{'  (in use: kept)' if i.locked_by else ''}")
    if not yes:
        click.confirm(f"remove these {len(items)} item(s), {human_bytes(size)}?", abort=True)
    t = time.perf_counter()
    freed, deleted, skipped = clean_cache(items)
    click.echo(
        f"removed {len(deleted)} item(s), freed {human_bytes(freed)} in {time.perf_counter() - t:.1f} s"
        + (f"; kept {len(skipped)} in use by a running process" if skipped else "")
    )

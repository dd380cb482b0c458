"""`tlmic cache`: what the cache folder holds, by kind, and cleaning that leaves locked items alone."""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest
from click.testing import CliRunner
from tlmic_cli.main import cli

from tlmic_feats import DataConfig, ExtractConfig, extract_features
from tlmic_feats.runtime.cache import clean_cache, scan_cache, select_items
from tlmic_feats.runtime.paths import disk_usage


@pytest.fixture
def cache(tmp_path, phantom_dir):
    """A cache root holding a store, its pixel cache, a finetuning-run folder, an old benchmark file."""
    root = tmp_path / "cache"
    extract_features(
        ExtractConfig(data=DataConfig(str(phantom_dir)), backbone="resnet18", weights="random:0", layers="1,2"),
        progress=False,
    )
    run = root / "runs" / "finetune-x"
    run.mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"config": {"data": {"path": "/data/cxr"}, "backbone": "resnet50"}}))
    (run / "best.pt").write_bytes(b"\0" * 5000)
    bench = root / "bench" / "old.json"
    bench.parent.mkdir(parents=True)
    bench.write_text("{}")
    old = time.time() - 40 * 86400
    os.utime(bench, (old, old))
    return root


def test_scan_names_every_item_with_kind_size_and_origin(cache, phantom_dir):
    items = scan_cache(cache)
    kinds = {i.kind for i in items}
    assert {"store", "pixels", "run", "bench"} <= kinds
    store = next(i for i in items if i.kind == "store")
    assert store.backbone == "resnet18" and store.dataset == phantom_dir.name
    run = next(i for i in items if i.kind == "run")
    assert (run.dataset, run.backbone, run.bytes) == ("cxr", "resnet50", disk_usage(run.path))
    # every byte under the root is in exactly one item
    assert sum(i.bytes for i in items) == disk_usage(cache)
    assert next(i for i in items if i.kind == "bench").age_days > 39


def test_clean_by_kind_and_age_frees_what_it_says_and_keeps_locked_items(cache):
    from tlmic_feats.runtime.locks import StoreLock

    items = scan_cache(cache)
    old = select_items(items, older_than_days=30)
    assert [i.kind for i in old] == ["bench"]
    store = next(i for i in items if i.kind == "store")
    before = disk_usage(cache)
    with StoreLock(store.path):  # a running extraction holds it
        freed, deleted, skipped = clean_cache(select_items(scan_cache(cache), kinds=("store", "run")))
    assert [i.kind for i in skipped] == ["store"] and store.path.is_dir()
    assert [i.kind for i in deleted] == ["run"] and freed == before - disk_usage(cache) > 5000


def test_cache_commands(cache, monkeypatch):
    monkeypatch.setenv("TLMIC_CACHE", str(cache))
    r = CliRunner().invoke(cli, ["cache", "info"])
    assert r.exit_code == 0 and "store" in r.output and "pixels" in r.output
    r = CliRunner().invoke(cli, ["cache", "list", "--kind", "run"])
    assert r.exit_code == 0 and "| run |" in r.output and "resnet50" in r.output and "| store |" not in r.output
    r = CliRunner().invoke(cli, ["cache", "clean"])
    assert r.exit_code == 2 and "say what to remove" in r.stderr
    r = CliRunner().invoke(cli, ["cache", "clean", "--kind", "run"], input="n\n")
    assert r.exit_code != 0 and (cache / "runs" / "finetune-x").is_dir()  # asked, and not confirmed
    r = CliRunner().invoke(cli, ["cache", "clean", "--kind", "run", "--yes"])
    assert r.exit_code == 0 and "removed 1 item(s), freed 5.1 kB" in r.output
    assert not (cache / "runs" / "finetune-x").exists()
    r = CliRunner().invoke(cli, ["cache", "clean", "--kind", "nonsense", "--yes"])
    assert r.exit_code == 2 and "nonsense" in r.stderr


def test_disk_usage_counts_files_not_links(tmp_path):
    (tmp_path / "a").write_bytes(np.zeros(100, np.uint8).tobytes())
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "b").write_bytes(b"x" * 50)
    (tmp_path / "link").symlink_to(tmp_path / "a")
    assert disk_usage(tmp_path) == 150 and disk_usage(tmp_path / "missing") == 0

"""Shared fixtures: small generated datasets, the shared real images, isolated caches."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
KERMANY = SHARED_DATA / "kermany-val"


@pytest.fixture(scope="session", autouse=True)
def _session_cache(tmp_path_factory):
    """Module- and session-scoped fixtures are built before the per-test cache below is set: theirs is
    this one (one per xdist worker), never the repo's cache/."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TLMIC_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Every test writes its default stores under its own tmp dir, never the repo's cache/."""
    monkeypatch.setenv("TLMIC_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="session")
def phantom_dir(tmp_path_factory) -> Path:
    """A small phantom dataset in the Kermany layout: 20 train, 8 val, 8 test images."""
    from tlmic_feats.data.phantom import PhantomConfig, make_phantom_dataset

    root = tmp_path_factory.mktemp("phantom")
    return make_phantom_dataset(root, PhantomConfig(n_train=20, n_val=8, n_test=8, prevalence=0.5))


@pytest.fixture(scope="session")
def disk_dir(tmp_path_factory) -> Path:
    """64-px images a few finetuning steps separate (a bright disk or not): 24 train, 12 val, 12 test."""
    from tlmic_feats.testing.datasets import disk_dataset

    return disk_dataset(tmp_path_factory.mktemp("disk"))


@pytest.fixture(scope="session")
def kermany_dir() -> Path:
    if not KERMANY.is_dir():
        pytest.skip(f"shared real images not present at {KERMANY}")
    return KERMANY
